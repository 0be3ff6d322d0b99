// What can be done to an environment, from the fleet and from its page: each action calls
// the API, shows its result as a toast and never blocks the page.
import { ApiError, del, get, post } from './api';
import { confirmDialog, openDialog } from './dialog';
import { h } from './dom';
import { toast } from './toast';
import type { Environment, Pool, Provider } from './types';

export function badge(state: string): HTMLElement {
  return h('span', { class: `badge badge-${state.replace(/[^a-z]/g, '')}`, 'data-state': state }, state);
}

export function label(env: Environment): string {
  return env.name || env.id.slice(0, 12);
}

function failed(what: string, e: unknown): void {
  const message = e instanceof ApiError ? e.message : String(e);
  toast(`${what} failed: ${message}`, 'error');
}

async function act(what: string, f: () => Promise<Environment>, done?: (env: Environment) => void) {
  try {
    const env = await f();
    toast(`${what}: ${label(env)} is ${env.state} (wanted ${env.desired_state})`);
    done?.(env);
  } catch (e) {
    failed(what, e);
  }
}

const path = (env: Environment) => `/v1/environments/${encodeURIComponent(env.id)}`;

export function actionButtons(env: Environment, done?: (env: Environment) => void): HTMLElement {
  const live = env.state !== 'deleted' && env.desired_state !== 'deleted';
  const name = label(env);
  return h('div', { class: 'actions' },
    h('button', {
      type: 'button', 'data-action': 'start', 'aria-label': `Start ${name}`,
      disabled: !live || env.desired_state === 'running',
      onclick: () => act('Start', () => post<Environment>(`${path(env)}/start`), done),
    }, 'Start'),
    h('button', {
      type: 'button', 'data-action': 'stop', 'aria-label': `Stop ${name}`,
      disabled: !live || env.desired_state === 'stopped',
      onclick: () => act('Stop', () => post<Environment>(`${path(env)}/stop`), done),
    }, 'Stop'),
    h('button', {
      type: 'button', 'data-action': 'extend', 'aria-label': `Extend ${name}`, disabled: !live,
      onclick: () => extendDialog(env, done),
    }, 'Extend'),
    h('button', {
      type: 'button', class: 'danger', 'data-action': 'delete', 'aria-label': `Delete ${name}`, disabled: !live,
      onclick: async () => {
        if (await confirmDialog('Delete environment', `Delete ${name} (${env.id})? Its resources are removed.`, 'Delete')) {
          await act('Delete', () => del<Environment>(path(env)), done);
        }
      },
    }, 'Delete'),
  );
}

function extendDialog(env: Environment, done?: (env: Environment) => void): void {
  const amount = h('select', { id: 'extend-by', name: 'by' },
    ...['15m', '30m', '1h', '4h', '12h', '1d', '7d'].map((v) => h('option', { value: v, selected: v === '1h' }, v)));
  openDialog(`Extend ${label(env)}`, (close) => h('form', {
    onsubmit: (e: Event) => {
      e.preventDefault();
      close();
      void act(`Extend by ${amount.value}`, () => post<Environment>(`${path(env)}/extend`, { by: amount.value }), done);
    },
  },
    h('label', { for: 'extend-by' }, 'Extend the lease by'), amount,
    h('div', { class: 'buttons' },
      h('button', { type: 'button', onclick: () => close() }, 'Cancel'),
      h('button', { type: 'submit', class: 'primary' }, 'Extend'),
    ),
  ));
}

function field(id: string, text: string, input: HTMLElement, hint?: string): HTMLElement {
  return h('div', { class: 'field' }, h('label', { for: id }, text), input, hint ? h('small', null, hint) : null);
}

/** Parses `k=v, k2=v2` into labels; throws on a pair without `=`. */
export function parseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const pair of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const at = pair.indexOf('=');
    if (at <= 0) throw new Error(`label ${JSON.stringify(pair)} is not key=value`);
    labels[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
  }
  return labels;
}

/** Create from a form or claim from a pool (a create with the pool's spec takes a warm member). */
export async function createDialog(admin: boolean, done: () => void): Promise<void> {
  const providers = await get<{ providers: Provider[] }>('/v1/providers').then((p) => p.providers).catch(() => []);
  const pools = admin ? await get<{ pools: Pool[] }>('/v1/pools').then((p) => p.pools).catch(() => []) : [];
  const input = (id: string, attrs: Record<string, string | boolean> = {}) => h('input', { id, name: id, ...attrs });
  const f = {
    pool: h('select', { id: 'c-pool', name: 'pool' }, h('option', { value: '' }, '— none: the spec below —'),
      ...pools.map((p) => h('option', { value: p.name }, `${p.name} (${p.spec.provider}, ${p.warm} warm)`))),
    name: input('c-name', { placeholder: 'lab-1' }),
    owner: input('c-owner', { required: true, placeholder: 'alice' }),
    provider: h('select', { id: 'c-provider', name: 'provider' },
      ...providers.filter((p) => p.available).map((p) => h('option', { value: p.name }, `${p.name} (${p.kind})`))),
    image: input('c-image', { placeholder: 'docker: busybox:latest' }),
    cmd: input('c-cmd', { placeholder: 'sleep 3600' }),
    vcpu: input('c-vcpu', { type: 'number', step: '0.25', min: '0' }),
    mem: input('c-mem', { type: 'number', min: '0', placeholder: 'MiB' }),
    disk: input('c-disk', { type: 'number', min: '0', placeholder: 'GiB' }),
    ports: input('c-ports', { placeholder: '8080, 9000' }),
    ttl: input('c-ttl', { placeholder: '1h (server default when empty)' }),
    labels: input('c-labels', { placeholder: 'course=cs101, lab=3' }),
  };
  openDialog('New environment', (close) => h('form', {
    class: 'create',
    onsubmit: async (e: Event) => {
      e.preventDefault();
      let body: Record<string, unknown>;
      try {
        body = buildCreate(f, pools);
      } catch (err) {
        toast(String(err instanceof Error ? err.message : err), 'error');
        return;
      }
      close();
      try {
        const res = await post<Environment>('/v1/environments', body);
        toast(`Created ${label(res)} (${res.state}${res.pool ? '' : ''})`);
        done();
      } catch (err) {
        failed('Create', err);
      }
    },
  },
    admin ? field('c-pool', 'Claim from pool', f.pool, 'A warm member of the pool is taken when one is ready') : null,
    field('c-name', 'Name', f.name),
    field('c-owner', 'Owner', f.owner),
    field('c-provider', 'Provider', f.provider),
    field('c-image', 'Image', f.image),
    field('c-cmd', 'Command', f.cmd, 'Words split on spaces'),
    h('div', { class: 'row' }, field('c-vcpu', 'vCPU', f.vcpu), field('c-mem', 'Memory (MiB)', f.mem), field('c-disk', 'Disk (GiB)', f.disk)),
    field('c-ports', 'Ports', f.ports),
    field('c-ttl', 'Lease (ttl)', f.ttl),
    field('c-labels', 'Labels', f.labels),
    h('div', { class: 'buttons' },
      h('button', { type: 'button', onclick: () => close() }, 'Cancel'),
      h('button', { type: 'submit', class: 'primary' }, 'Create'),
    ),
  ));
}

type Form = Record<'pool' | 'name' | 'owner' | 'provider' | 'image' | 'cmd' | 'vcpu' | 'mem' | 'disk' | 'ports' | 'ttl' | 'labels',
  HTMLInputElement | HTMLSelectElement>;

function buildCreate(f: Form, pools: Pool[]): Record<string, unknown> {
  const body: Record<string, unknown> = { owner: f.owner.value.trim() };
  if (f.name.value.trim()) body.name = f.name.value.trim();
  if (f.ttl.value.trim()) body.ttl = f.ttl.value.trim();
  const labels = parseLabels(f.labels.value);
  if (Object.keys(labels).length) body.labels = labels;
  const pool = pools.find((p) => p.name === f.pool.value);
  if (pool) {
    body.spec = pool.spec;
    body.lifecycle = pool.lifecycle;
    return body;
  }
  const spec: Record<string, unknown> = { provider: f.provider.value };
  if (f.image.value.trim()) spec.image = f.image.value.trim();
  const cmd = f.cmd.value.trim().split(/\s+/).filter(Boolean);
  if (cmd.length) spec.cmd = cmd;
  const resources: Record<string, number> = {};
  if (f.vcpu.value) resources.vcpu = Number(f.vcpu.value);
  if (f.mem.value) resources.mem_mb = Number(f.mem.value);
  if (f.disk.value) resources.disk_gb = Number(f.disk.value);
  if (Object.keys(resources).length) spec.resources = resources;
  const ports = f.ports.value.split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  if (ports.some((p) => !Number.isInteger(p) || p < 1 || p > 65535)) throw new Error('ports are numbers from 1 to 65535');
  if (ports.length) spec.ports = ports;
  body.spec = spec;
  return body;
}
