// Webhooks and their deliveries (GET /v1/webhooks, /v1/webhooks/{id}/deliveries); a server
// without them (404) says so.
import { ApiError, get } from '../api';
import { h, fill } from '../dom';
import { when } from '../format';
import type { Delivery, Webhook } from '../types';
import { table } from './table';

export async function webhooks(main: HTMLElement): Promise<void> {
  const deliveries = h('section', { id: 'deliveries' });
  let list: Webhook[];
  try {
    list = (await get<{ webhooks: Webhook[] }>('/v1/webhooks')).webhooks;
  } catch (e) {
    const missing = e instanceof ApiError && e.status === 404;
    fill(main, h('h1', null, 'Webhooks'), h('p', { class: missing ? 'muted' : 'error' },
      missing ? 'This server has no webhooks (not built into this version).' : e instanceof Error ? e.message : String(e)));
    return;
  }
  const show = async (w: Webhook) => {
    try {
      const d = (await get<{ deliveries: Delivery[] }>(`/v1/webhooks/${encodeURIComponent(w.id)}/deliveries`)).deliveries;
      fill(deliveries, h('h2', null, 'Deliveries to ', w.url),
        table('Deliveries', ['Event', 'Environment', 'Status', 'Attempts', 'Response', 'Error', 'Next attempt', 'Delivered', 'Created'],
          d.map((x) => [x.event, x.environment_id ?? '—', h('span', { class: `badge badge-${x.status === 'delivered' ? 'running' : x.status === 'failed' ? 'failed' : 'pending'}` }, x.status),
            String(x.attempts), x.response_code ? String(x.response_code) : '—', x.error ?? '—', when(x.next_attempt_at), when(x.delivered_at), when(x.created_at)])));
    } catch (e) {
      fill(deliveries, h('p', { class: 'error' }, e instanceof Error ? e.message : String(e)));
    }
  };
  fill(main, h('h1', null, 'Webhooks'),
    table('Webhooks', ['URL', 'Events', 'Tenant', 'Created', ''],
      list.map((w) => [w.url, w.events.join(', '), w.tenant ?? '—', when(w.created_at),
        h('button', { type: 'button', onclick: () => void show(w) }, 'Deliveries')])),
    deliveries);
}
