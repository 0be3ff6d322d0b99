// The terminal: xterm.js over GET /v1/environments/{id}/terminal?cols=C&rows=R (a WebSocket).
// Binary frames carry the PTY's bytes both ways; a text frame {"type":"resize",cols,rows}
// resizes; the server closes with a reason on error.
import { FitAddon } from '@xterm/addon-fit';
import { Terminal } from '@xterm/xterm';
import '@xterm/xterm/css/xterm.css';

export async function openTerminal(box: HTMLElement, id: string, note: (m: string) => void): Promise<() => void> {
  const url = `/v1/environments/${encodeURIComponent(id)}/terminal`;
  // Asked first without upgrading, so a missing route or a stopped environment gets a clear
  // message instead of a failed handshake.
  try {
    const probe = await fetch(`${url}?cols=80&rows=24`, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    if (probe.status === 404) {
      const body = (await probe.json().catch(() => null)) as { error?: { message?: string } } | null;
      const msg = body?.error?.message ?? '';
      note(msg.includes('route') || msg === ''
        ? 'This server has no terminal route (not built into this version).'
        : `No terminal: ${msg}`);
      return () => {};
    }
    if (probe.status === 409 || probe.status === 401 || probe.status === 403) {
      const body = (await probe.json().catch(() => null)) as { error?: { message?: string } } | null;
      note(`No terminal: ${body?.error?.message ?? probe.statusText}`);
      return () => {};
    }
  } catch {
    note('The server did not answer.');
    return () => {};
  }
  box.replaceChildren();
  const term = new Terminal({ cursorBlink: true, fontSize: 13, scrollback: 2000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${proto}://${location.host}${url}?cols=${term.cols}&rows=${term.rows}`);
  ws.binaryType = 'arraybuffer';
  const encoder = new TextEncoder();
  ws.addEventListener('open', () => { note('Connected.'); term.focus(); });
  ws.addEventListener('message', (e) => {
    if (e.data instanceof ArrayBuffer) term.write(new Uint8Array(e.data));
    else term.write(String(e.data));
  });
  ws.addEventListener('close', (e) => note(`Disconnected${e.reason ? `: ${e.reason}` : ` (code ${e.code})`}.`));
  const input = term.onData((d) => { if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(d)); });
  const resize = term.onResize(({ cols, rows }) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'resize', cols, rows }));
  });
  const onWindow = () => fit.fit();
  window.addEventListener('resize', onWindow);
  return () => {
    window.removeEventListener('resize', onWindow);
    input.dispose();
    resize.dispose();
    ws.close();
    term.dispose();
  };
}
