// The pre-expiry banner: a running environment whose last pre-expiry warning (`warned_at`)
// is set. Tolerates servers whose environments carry no such field.
import { label } from '../actions';
import { h } from '../dom';
import { timeLeft } from '../format';
import type { Environment } from '../types';

export function expiryBanner(envs: Environment[]): HTMLElement[] {
  return envs
    .filter((e) => e.state === 'running' && typeof e.warned_at === 'string' && e.warned_at)
    .map((e) => h('div', { class: 'banner', role: 'alert', 'data-warned': e.id },
      h('strong', null, 'Expiring soon: '),
      h('a', { href: `#/env/${encodeURIComponent(e.id)}` }, label(e)),
      ' ends in ',
      h('span', { 'data-expires': e.expires_at ?? '' }, timeLeft(e.expires_at)),
      '. Extend it to keep it.'));
}
