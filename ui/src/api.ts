// The dashboard's one way to the server: the ordinary /v1 API, with the session cookie
// (sent by the browser, HttpOnly) and the session's CSRF token on every change.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

let csrf: string | null = null;
let onSignedOut: () => void = () => {};

export function setCsrf(token: string | null): void {
  csrf = token;
}

export function whenSignedOut(f: () => void): void {
  onSignedOut = f;
}

export interface Answer<T> {
  data: T;
  status: number;
  headers: Headers;
}

export async function call<T>(method: string, path: string, body?: unknown): Promise<Answer<T>> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD' && csrf) headers['X-Lapse-CSRF'] = csrf;
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
    });
  } catch (e) {
    throw new ApiError(0, 'network', `the server did not answer (${String(e)})`);
  }
  const text = await res.text();
  let data: unknown = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!res.ok) {
    const detail = (data as { error?: { code?: string; message?: string } } | null)?.error;
    const err = new ApiError(res.status, detail?.code ?? 'error', detail?.message ?? `${res.status} ${res.statusText}`);
    if (res.status === 401 && !path.startsWith('/ui/session')) onSignedOut();
    throw err;
  }
  return { data: data as T, status: res.status, headers: res.headers };
}

export const get = <T>(path: string) => call<T>('GET', path).then((a) => a.data);
export const post = <T>(path: string, body?: unknown) => call<T>('POST', path, body ?? {}).then((a) => a.data);
export const del = <T>(path: string) => call<T>('DELETE', path).then((a) => a.data);

export function query(params: Record<string, string | string[] | undefined | null>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === '') continue;
    for (const one of Array.isArray(v) ? v : [v]) q.append(k, one);
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}
