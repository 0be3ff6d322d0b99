// The fleet: every environment the caller may see, filtered, paged by the API's cursor and
// kept live by the watch stream.
import { actionButtons, badge, createDialog, label } from '../actions';
import { call, query } from '../api';
import { h, fill } from '../dom';
import { ago, duration, memory, newest, parseTime, timeLeft } from '../format';
import { subscribe } from '../live';
import { toast } from '../toast';
import { STATES, type Environment, type Provider, type Session } from '../types';
import { expiryBanner } from './banner';

const PAGE = 50;

export function fleet(main: HTMLElement, session: Session): () => void {
  const state = h('select', { id: 'f-state', name: 'state' }, h('option', { value: '' }, 'any live state'),
    ...STATES.map((s) => h('option', { value: s }, s)));
  const provider = h('select', { id: 'f-provider', name: 'provider' }, h('option', { value: '' }, 'any provider'));
  const tenant = h('input', { id: 'f-tenant', name: 'tenant', placeholder: 'tenant', hidden: !session.admin });
  const labelSel = h('input', { id: 'f-label', name: 'label', placeholder: 'key=value' });
  const search = h('input', { id: 'f-search', name: 'search', type: 'search', placeholder: 'name, id, owner, label' });
  const banner = h('div', { class: 'banners' });
  const body = h('tbody');
  const count = h('span', { class: 'muted' });
  const prev = h('button', { type: 'button', disabled: true }, '← Previous');
  const next = h('button', { type: 'button', disabled: true }, 'Next →');
  let rows: Environment[] = [];
  let cursors: (string | null)[] = [null];
  let nextCursor: string | null = null;
  // A list read races the live stream: a change may arrive while the read is in flight and
  // the read's answer may predate it. Changes that arrive during a read are kept here and
  // win over the read's copy unless the read's is newer (stop 22's failure: a new
  // environment's `running` came before a list read that still said `creating`).
  let loads = 0;
  let latestLoad = 0;
  const arrived = new Map<string, Environment>();

  fetch('/v1/providers', { credentials: 'same-origin' }).then(async (r) => {
    if (!r.ok) return;
    const list = ((await r.json()) as { providers: Provider[] }).providers;
    for (const p of list) provider.appendChild(h('option', { value: p.name }, p.name));
  }).catch(() => {});

  const table = h('table', { class: 'fleet' },
    h('caption', { class: 'sr-only' }, 'Environments'),
    h('thead', null, h('tr', null, ...['Name', 'Status', 'Provider', 'Owner', 'Tenant', 'vCPU', 'Memory', 'Disk',
      'Runtime', 'Time left', 'Idle', 'Labels', 'Endpoints', 'Actions'].map((c) => h('th', { scope: 'col' }, c)))),
    body);

  fill(main,
    h('div', { class: 'page-head' }, h('h1', null, 'Fleet'), count,
      h('button', { type: 'button', class: 'primary', id: 'new-env', onclick: () => void createDialog(session.admin, () => load()) }, 'New environment'),
      h('button', { type: 'button', onclick: () => load() }, 'Refresh')),
    banner,
    h('form', { class: 'filters', role: 'search', onsubmit: (e: Event) => { e.preventDefault(); cursors = [null]; load(); } },
      h('label', { for: 'f-state', class: 'sr-only' }, 'State'), state,
      h('label', { for: 'f-provider', class: 'sr-only' }, 'Provider'), provider,
      session.admin ? [h('label', { for: 'f-tenant', class: 'sr-only' }, 'Tenant'), tenant] : null,
      h('label', { for: 'f-label', class: 'sr-only' }, 'Label'), labelSel,
      h('label', { for: 'f-search', class: 'sr-only' }, 'Search'), search,
      h('button', { type: 'submit' }, 'Apply')),
    h('div', { class: 'table-wrap' }, table),
    h('div', { class: 'pager' }, prev, next));

  for (const el of [state, provider]) el.addEventListener('change', () => { cursors = [null]; load(); });
  for (const el of [search, tenant]) el.addEventListener('input', () => render());
  prev.addEventListener('click', () => { cursors.pop(); load(); });
  next.addEventListener('click', () => { if (nextCursor) { cursors.push(nextCursor); load(); } });

  function visible(env: Environment): boolean {
    if (state.value ? env.state !== state.value : env.state === 'deleted') return false;
    if (provider.value && env.spec.provider !== provider.value) return false;
    if (tenant.value && (env.tenant ?? '') !== tenant.value.trim()) return false;
    const sel = labelSel.value.trim();
    if (sel) {
      const [k, v] = sel.split('=', 2);
      if (env.labels[k] !== v) return false;
    }
    const q = search.value.trim().toLowerCase();
    if (!q) return true;
    const hay = [env.id, env.name ?? '', env.owner, env.tenant ?? '', ...Object.entries(env.labels).map(([k, v]) => `${k}=${v}`)];
    return hay.some((s) => s.toLowerCase().includes(q));
  }

  async function load(): Promise<void> {
    const cursor = cursors[cursors.length - 1];
    const sel = labelSel.value.trim();
    const seq = ++latestLoad;
    loads++;
    try {
      const res = await call<{ environments: Environment[] }>('GET', `/v1/environments${query({
        state: state.value, provider: provider.value, label: sel || undefined, limit: String(PAGE), cursor: cursor ?? undefined,
      })}`);
      // A later read (a filter change, a resync) answers for the present; this one is stale.
      if (seq !== latestLoad) return;
      nextCursor = res.headers.get('Lapse-Next-Cursor');
      rows = res.data.environments.map((env) => newest(env, arrived.get(env.id)));
      for (const env of arrived.values()) {
        if (!nextCursor && !rows.some((e) => e.id === env.id)) rows.push(env);
      }
      render();
    } catch (e) {
      toast(`Listing failed: ${e instanceof Error ? e.message : String(e)}`, 'error');
    } finally {
      if (--loads === 0) arrived.clear();
    }
  }

  function render(): void {
    const shown = rows.filter(visible);
    fill(body, ...shown.map(row));
    if (!shown.length) body.appendChild(h('tr', null, h('td', { colspan: 14, class: 'empty' }, 'No environments.')));
    count.textContent = `${shown.length} shown`;
    prev.disabled = cursors.length <= 1;
    next.disabled = !nextCursor;
    fill(banner, ...expiryBanner(rows));
  }

  function row(env: Environment): HTMLElement {
    const r = env.spec.resources ?? {};
    const link = h('a', { href: `#/env/${encodeURIComponent(env.id)}` }, label(env));
    return h('tr', { 'data-id': env.id },
      h('td', { 'data-label': 'Name' }, link, h('div', { class: 'muted mono' }, env.id.slice(0, 13))),
      h('td', { 'data-label': 'Status' }, badge(env.state), env.reason ? h('div', { class: 'muted reason' }, env.reason) : null),
      h('td', { 'data-label': 'Provider' }, env.spec.provider),
      h('td', { 'data-label': 'Owner' }, env.owner),
      h('td', { 'data-label': 'Tenant' }, env.tenant ?? '—'),
      h('td', { 'data-label': 'vCPU' }, r.vcpu ?? '—'),
      h('td', { 'data-label': 'Memory' }, memory(r.mem_mb)),
      h('td', { 'data-label': 'Disk' }, r.disk_gb ? `${r.disk_gb} GiB` : '—'),
      h('td', { 'data-label': 'Runtime', 'data-since': env.state === 'running' ? env.created_at : null }, runtime(env)),
      h('td', { 'data-label': 'Time left', class: 'countdown', 'data-expires': env.expires_at ?? '' }, timeLeft(env.expires_at)),
      h('td', { 'data-label': 'Idle', 'data-active': env.last_active_at ?? '' }, env.last_active_at ? ago(env.last_active_at) : '—'),
      h('td', { 'data-label': 'Labels' }, ...Object.entries(env.labels).map(([k, v]) => h('span', { class: 'chip' }, `${k}=${v}`))),
      h('td', { 'data-label': 'Endpoints' }, ...endpoints(env)),
      h('td', { 'data-label': 'Actions' }, actionButtons(env, update)),
    );
  }

  function update(env: Environment): void {
    if (loads > 0) arrived.set(env.id, env);
    const at = rows.findIndex((e) => e.id === env.id);
    if (at >= 0) rows[at] = env;
    else if (!nextCursor) rows.push(env);
    else return;
    render();
  }

  const tick = setInterval(() => {
    const now = Date.now();
    for (const td of body.querySelectorAll<HTMLElement>('[data-expires]')) td.textContent = timeLeft(td.dataset.expires, now);
    for (const td of body.querySelectorAll<HTMLElement>('[data-active]')) if (td.dataset.active) td.textContent = ago(td.dataset.active, now);
    for (const td of body.querySelectorAll<HTMLElement>('[data-since]')) if (td.dataset.since) td.textContent = ago(td.dataset.since, now);
    for (const b of banner.querySelectorAll<HTMLElement>('[data-expires]')) b.textContent = timeLeft(b.dataset.expires, now);
  }, 1000);
  const unsubscribe = subscribe({ change: update, resync: () => void load() });
  void load();
  return () => {
    clearInterval(tick);
    unsubscribe();
  };
}

function runtime(env: Environment): string {
  const start = parseTime(env.created_at);
  if (start === null) return '—';
  const end = env.state === 'running' ? Date.now() : parseTime(env.finished_at) ?? parseTime(env.updated_at) ?? Date.now();
  return duration(end - start);
}

export function endpoints(env: Environment): HTMLElement[] {
  return env.endpoints.map((ep) => {
    const text = `${ep.container_port} → ${ep.host}:${ep.port}`;
    return ep.protocol === 'tcp' || ep.protocol === 'http'
      ? h('a', { class: 'chip', href: `http://${ep.host}:${ep.port}/`, target: '_blank', rel: 'noopener noreferrer' }, text)
      : h('span', { class: 'chip' }, text);
  });
}
