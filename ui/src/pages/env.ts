// One environment: details, spec, endpoints (with proxy links), events, logs that follow,
// and a terminal.
import { actionButtons, badge, label } from '../actions';
import { ApiError, get, post, query } from '../api';
import { h, fill } from '../dom';
import { ago, newest, timeLeft, when } from '../format';
import { subscribe } from '../live';
import { openTerminal } from '../terminal';
import { toast } from '../toast';
import type { Environment, EventView, Session } from '../types';
import { expiryBanner } from './banner';
import { endpoints } from './fleet';

export function environment(main: HTMLElement, _session: Session, id: string): () => void {
  const path = `/v1/environments/${encodeURIComponent(id)}`;
  const head = h('div', { class: 'page-head' });
  const banner = h('div', { class: 'banners' });
  const details = h('dl', { class: 'details' });
  const spec = h('pre', { class: 'spec' });
  const eps = h('div', { class: 'endpoints' });
  const events = h('tbody');
  const stdout = h('pre', { class: 'logs', tabindex: 0, 'aria-label': 'stdout' });
  const stderr = h('pre', { class: 'logs stderr', tabindex: 0, 'aria-label': 'stderr' });
  const follow = h('input', { type: 'checkbox', id: 'follow', checked: true });
  const termBox = h('div', { class: 'terminal-box' });
  const termNote = h('p', { class: 'muted', id: 'terminal-note' });
  let current: Environment | null = null;
  let closeTerminal: (() => void) | null = null;

  fill(main, head, banner,
    h('section', null, h('h2', null, 'Details'), details),
    h('section', null, h('h2', null, 'Endpoints'), eps),
    h('section', null, h('h2', null, 'Spec'), spec),
    h('section', null, h('h2', null, 'Terminal'),
      h('button', { type: 'button', id: 'open-terminal', onclick: () => startTerminal() }, 'Open terminal'), termNote, termBox),
    h('section', null, h('h2', null, 'Logs'),
      h('label', { for: 'follow', class: 'inline' }, follow, ' follow'),
      h('h3', null, 'stdout'), stdout, h('h3', null, 'stderr'), stderr),
    h('section', null, h('h2', null, 'Events'),
      h('div', { class: 'table-wrap' }, h('table', null,
        h('thead', null, h('tr', null, ...['When', 'Actor', 'Action', 'Outcome', 'Message'].map((c) => h('th', { scope: 'col' }, c)))),
        events))));

  function render(env: Environment): void {
    current = env;
    fill(head, h('h1', null, label(env)), badge(env.state), actionButtons(env, render));
    fill(banner, ...expiryBanner([env]));
    const r = env.spec.resources ?? {};
    const rows: [string, string | Node][] = [
      ['ID', env.id], ['Tenant', env.tenant ?? '—'], ['Owner', env.owner], ['Provider', env.spec.provider],
      ['State', `${env.state} (wanted ${env.desired_state})`], ['Reason', env.reason ?? '—'], ['Lifecycle', env.lifecycle],
      ['Resources', `${r.vcpu ?? '—'} vCPU, ${r.mem_mb ?? '—'} MiB, ${r.disk_gb ?? '—'} GiB`],
      ['Created', when(env.created_at)], ['Expires', when(env.expires_at)],
      ['Time left', h('span', { 'data-expires': env.expires_at ?? '', class: 'countdown' }, timeLeft(env.expires_at))],
      ['Last active', env.last_active_at ? `${ago(env.last_active_at)} ago` : '—'],
      ['Health', env.health ?? '—'], ['Pool', env.pool ?? '—'],
      ['Labels', h('span', null, ...Object.entries(env.labels).map(([k, v]) => h('span', { class: 'chip' }, `${k}=${v}`)))],
    ];
    fill(details, ...rows.flatMap(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
    spec.textContent = JSON.stringify(env.spec, null, 2);
    fill(eps, ...(env.endpoints.length ? endpoints(env) : [h('span', { class: 'muted' }, 'None recorded.')]),
      ...(env.spec.ports ?? []).map((port) => h('button', {
        type: 'button', onclick: async () => {
          try {
            const link = await post<{ url: string }>(`${path}/links`, { port });
            window.open(link.url, '_blank', 'noopener');
          } catch (e) {
            toast(`Proxy link failed: ${e instanceof ApiError ? e.message : String(e)}`, 'error');
          }
        },
      }, `Proxy link to ${port}`)));
  }

  // The read and the live stream race: the copy shown is the newest seen.
  let shown: Environment | undefined;
  function show(env: Environment): void {
    if (shown && newest(env, shown) === shown) return;
    shown = env;
    render(env);
  }

  async function load(): Promise<void> {
    try {
      show(await get<Environment>(path));
    } catch (e) {
      fill(head, h('h1', null, 'Environment'), h('p', { class: 'error' }, e instanceof ApiError ? e.message : String(e)));
      return;
    }
    void loadEvents();
  }

  async function loadEvents(): Promise<void> {
    try {
      const list = await get<{ events: EventView[] }>(`/v1/events${query({ environment: id, limit: '200' })}`);
      fill(events, ...list.events.slice().reverse().map((e) => h('tr', null,
        h('td', { 'data-label': 'When' }, when(e.at)), h('td', { 'data-label': 'Actor' }, e.actor),
        h('td', { 'data-label': 'Action' }, e.action), h('td', { 'data-label': 'Outcome' }, e.outcome),
        h('td', { 'data-label': 'Message' }, e.message))));
    } catch { /* shown by the next load */ }
  }

  // Logs: the API has no follow mode, so the tail is read again every 2 s.
  let logsNote = '';
  async function loadLogs(): Promise<void> {
    if (!current || !['running', 'stopped', 'failed'].includes(current.state)) return;
    try {
      const logs = await get<{ stdout: string; stderr: string }>(`${path}/logs?tail=500`);
      for (const [el, text] of [[stdout, logs.stdout], [stderr, logs.stderr]] as const) {
        if (el.textContent !== text) {
          el.textContent = text;
          if (follow.checked) el.scrollTop = el.scrollHeight;
        }
      }
      logsNote = '';
    } catch (e) {
      const why = e instanceof ApiError ? e.message : String(e);
      if (why !== logsNote) stdout.textContent = `(no logs: ${why})`;
      logsNote = why;
    }
  }

  async function startTerminal(): Promise<void> {
    closeTerminal?.();
    closeTerminal = null;
    if (current && current.state !== 'running') {
      termNote.textContent = `The terminal needs a running environment; this one is ${current.state}.`;
      return;
    }
    closeTerminal = await openTerminal(termBox, id, (message) => { termNote.textContent = message; });
  }

  const tick = setInterval(() => {
    for (const el of main.querySelectorAll<HTMLElement>('[data-expires]')) el.textContent = timeLeft(el.dataset.expires);
  }, 1000);
  const logTimer = setInterval(() => void loadLogs(), 2000);
  const unsubscribe = subscribe({
    change: (env) => { if (env.id === id) { shown = env; render(env); void loadEvents(); } },
    resync: () => void load(),
  });
  void load().then(() => loadLogs());
  return () => {
    clearInterval(tick);
    clearInterval(logTimer);
    unsubscribe();
    closeTerminal?.();
  };
}
