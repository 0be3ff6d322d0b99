// Pools, queues, providers and background tasks.
import { ApiError, get } from '../api';
import { h, fill } from '../dom';
import { duration } from '../format';
import type { Pool, Provider, Queues, Session } from '../types';
import { table, yes } from './table';

function failure(main: HTMLElement, title: string, e: unknown): void {
  fill(main, h('h1', null, title), h('p', { class: 'error' }, e instanceof ApiError ? e.message : String(e)));
}

export async function pools(main: HTMLElement, session: Session): Promise<void> {
  if (!session.admin) {
    fill(main, h('h1', null, 'Pools'), h('p', { class: 'muted' }, 'Warm pools are shared infrastructure: only the admin key sees them.'));
    return;
  }
  try {
    const list = (await get<{ pools: Pool[] }>('/v1/pools')).pools;
    fill(main, h('h1', null, 'Pools'),
      h('p', { class: 'muted' }, 'Claims per minute are counted by this server since it started.'),
      table('Pools', ['Name', 'Provider', 'Warm', 'Starting', 'Min', 'Max', 'Claims/min', 'Version', 'Lifecycle', 'Source', 'Spec hash'],
        list.map((p) => [p.name, p.spec.provider, String(p.warm), String(p.starting), String(p.min), String(p.max),
          String(p.claims_last_minute ?? 0),
          p.version, p.lifecycle, p.source, h('span', { class: 'mono' }, p.spec_hash.slice(0, 12))])));
  } catch (e) {
    failure(main, 'Pools', e);
  }
}

export async function queues(main: HTMLElement, session: Session): Promise<void> {
  if (!session.admin) {
    fill(main, h('h1', null, 'Queues'), h('p', { class: 'muted' }, 'Queues are for the admin key.'));
    return;
  }
  try {
    const q = await get<Queues>('/v1/queues');
    const n = (v: number | null | undefined) => (v === null || v === undefined ? '—' : String(v));
    fill(main, h('h1', null, 'Queues'),
      q.enabled
        ? h('p', null, `Redis ${q.redis ?? ''}: `, yes(q.connected), q.error ? h('span', { class: 'error' }, ` ${q.error}`) : null)
        : h('p', { class: 'muted' }, 'This server consumes no queues (no REDIS_CONNECTION_STRING).'),
      table('Queues', ['Queue', 'Key', 'Depth', 'In flight', 'Dead letters', 'Processed', 'Applied since start', 'Dead-lettered since start', 'Dead-letter list'],
        q.queues.map((x) => [x.name, h('span', { class: 'mono' }, x.key), n(x.depth), n(x.in_flight), n(x.dead_lettered),
          String(x.processed), String(x.applied_since_start), String(x.dead_lettered_since_start),
          h('span', { class: 'mono' }, x.dead_letter_key)])),
      ...q.queues.map((x) => h('section', null,
        h('h2', null, `Newest dead letters of ${x.name}`),
        table(`Dead letters of ${x.name}`, ['When', 'Reason', 'Message', 'Length'],
          (x.recent_dead_letters ?? []).map((d) => [d.at, d.reason,
            h('span', { class: 'mono' }, d.truncated ? `${d.message}…` : d.message), String(d.length)])))));
  } catch (e) {
    failure(main, 'Queues', e);
  }
}

export async function providers(main: HTMLElement): Promise<void> {
  try {
    const list = (await get<{ providers: Provider[] }>('/v1/providers')).providers;
    fill(main, h('h1', null, 'Providers'),
      table('Providers', ['Name', 'Kind', 'Healthy', 'Detail', 'Capabilities', 'Sweep every', 'Concurrency'],
        list.map((p) => [p.name, p.kind, yes(p.available), p.detail,
          Object.entries(p.capabilities).filter(([, v]) => v).map(([k]) => k).join(', ') || '—',
          duration(p.sweep_interval_secs * 1000), String(p.concurrency)])));
  } catch (e) {
    failure(main, 'Providers', e);
  }
}

interface Status { version: string; controller_id: string; providers: string[]; timers: number; backlog: number;
  config?: { path: string; applied_at?: string | null; error?: string | null } | null }
interface Ready { ready: boolean; store_writable: boolean; loops: { name: string; ok: boolean; last_tick_ms_ago?: number | null }[]; problems?: string[] }

export async function status(main: HTMLElement, session: Session): Promise<void> {
  try {
    const ready = await get<Ready>('/readyz').catch((e) => (e instanceof ApiError && e.status === 503 ? null : Promise.reject(e)));
    const s = session.admin ? await get<Status>('/v1/status') : null;
    fill(main, h('h1', null, 'Background tasks'),
      s ? h('dl', { class: 'details' },
        h('dt', null, 'Version'), h('dd', null, s.version),
        h('dt', null, 'Controller'), h('dd', { class: 'mono' }, s.controller_id),
        h('dt', null, 'Providers'), h('dd', null, s.providers.join(', ')),
        h('dt', null, 'Timers'), h('dd', null, String(s.timers)),
        h('dt', null, 'Reconciler backlog'), h('dd', null, String(s.backlog)),
        h('dt', null, 'Config file'), h('dd', null, s.config ? `${s.config.path}${s.config.error ? ` — ${s.config.error}` : ''}` : 'none'),
      ) : h('p', { class: 'muted' }, 'Server status is for the admin key.'),
      ready
        ? [h('p', null, 'Ready: ', yes(ready.ready), ' Store writable: ', yes(ready.store_writable)),
          table('Loops', ['Loop', 'OK', 'Last tick'], ready.loops.map((l) => [l.name, yes(l.ok),
            l.last_tick_ms_ago === null || l.last_tick_ms_ago === undefined ? '—' : `${duration(l.last_tick_ms_ago)} ago`])),
          ...(ready.problems ?? []).map((p) => h('p', { class: 'error' }, p))]
        : h('p', { class: 'error' }, 'The server is not ready.'));
  } catch (e) {
    failure(main, 'Background tasks', e);
  }
}
