// One Server-Sent Events stream (GET /v1/environments/watch) shared by the pages: each
// `environment` event is an environment as GET /v1/environments/{id} shows it; `resync`
// means the server dropped events for this stream, so lists are read again.
import type { Environment } from './types';

type Listener = { change: (env: Environment) => void; resync: () => void };

const listeners = new Set<Listener>();
let source: EventSource | null = null;

export function subscribe(listener: Listener): () => void {
  listeners.add(listener);
  ensure();
  return () => listeners.delete(listener);
}

function ensure(): void {
  if (source && source.readyState !== EventSource.CLOSED) return;
  source = new EventSource('/v1/environments/watch', { withCredentials: true });
  source.addEventListener('environment', (e) => {
    let env: Environment;
    try {
      env = JSON.parse((e as MessageEvent<string>).data) as Environment;
    } catch {
      return;
    }
    for (const l of listeners) l.change(env);
  });
  source.addEventListener('resync', () => {
    for (const l of listeners) l.resync();
  });
  // The browser reconnects by itself; after a reconnect, what was missed is read again.
  source.addEventListener('open', () => {
    for (const l of listeners) l.resync();
  });
}

export function closeLive(): void {
  source?.close();
  source = null;
}
