// The API's JSON shapes the dashboard reads (lapse-core's wire.rs), loosely: fields another
// version may lack are optional.

export interface Endpoint {
  container_port: number;
  protocol: string;
  host: string;
  port: number;
}

export interface Spec {
  provider: string;
  image?: string;
  cmd?: string[];
  env?: Record<string, string>;
  resources?: { vcpu?: number; mem_mb?: number; disk_gb?: number };
  ports?: number[];
  routes?: Record<string, unknown>;
  [key: string]: unknown;
}

export interface Environment {
  id: string;
  name?: string | null;
  tenant?: string | null;
  owner: string;
  labels: Record<string, string>;
  spec: Spec;
  lifecycle: string;
  desired_state: string;
  state: string;
  reason?: string | null;
  endpoints: Endpoint[];
  expires_at?: string | null;
  on_expiry: string;
  pool?: string | null;
  idle_timeout?: string | null;
  last_active_at?: string | null;
  idled_at?: string | null;
  health?: string | null;
  ready?: boolean;
  created_at: string;
  updated_at: string;
  finished_at?: string | null;
  /** The last pre-expiry warning (webhooks and warnings, another part of issue 13). */
  warned_at?: string | null;
  warn_before?: number[] | null;
}

export interface Session {
  required: boolean;
  signed_in: boolean;
  actor?: string;
  tenant?: string | null;
  admin: boolean;
  csrf?: string;
  expires_at?: string;
}

export interface Provider {
  name: string;
  kind: string;
  available: boolean;
  detail: string;
  capabilities: Record<string, boolean>;
  sweep_interval_secs: number;
  concurrency: number;
}

export interface Pool {
  name: string;
  spec: Spec;
  spec_hash: string;
  min: number;
  max: number;
  version: string;
  lifecycle: string;
  source: string;
  warm: number;
  starting: number;
  claims_last_minute?: number;
}

export interface EventView {
  seq: number;
  at: string;
  environment_id?: string | null;
  actor: string;
  action: string;
  outcome: string;
  message: string;
  tenant?: string | null;
}

export interface Queue {
  name: string;
  key: string;
  processing_key: string;
  dead_letter_key: string;
  depth?: number | null;
  in_flight?: number | null;
  dead_lettered?: number | null;
  processed: number;
  applied_since_start: number;
  dead_lettered_since_start: number;
  concurrency: number;
  recent_dead_letters?: DeadLetter[];
}

export interface DeadLetter {
  reason: string;
  at: string;
  message: string;
  length: number;
  truncated: boolean;
}

export interface Queues {
  enabled: boolean;
  redis?: string | null;
  connected: boolean;
  error?: string | null;
  provider?: string | null;
  queues: Queue[];
}

export interface Usage {
  from: string;
  to: string;
  tenants: { tenant: string; environments: number; running_hours: number; stopped_hours: number; cost: number }[];
  environments: {
    id: string;
    tenant: string;
    owner: string;
    running_hours: number;
    stopped_hours: number;
    hourly: number;
    cost: number;
  }[];
}

export interface Webhook {
  id: string;
  url: string;
  events: string[];
  tenant?: string | null;
  created_at: string;
}

export interface Delivery {
  id: string;
  webhook_id: string;
  event: string;
  environment_id?: string | null;
  status: 'pending' | 'delivered' | 'failed' | string;
  attempts: number;
  response_code?: number | null;
  error?: string | null;
  next_attempt_at?: string | null;
  delivered_at?: string | null;
  created_at: string;
}

export const STATES = [
  'pending', 'provisioning', 'running', 'stopping', 'stopped', 'deleting', 'deleted', 'failed',
];
