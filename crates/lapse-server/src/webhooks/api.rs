//! What `/v1/webhooks` means, below HTTP: a tenant registers, sees and removes only its own
//! hooks (another tenant's is `not found`, like a missing one); the admin sees every hook and
//! may make operator hooks (no tenant: every tenant's events). A hook's URL is checked
//! ([`super::address`]) before anything is written; its secret is shown once, in the answer
//! that made it.

use lapse_core::model::{is_environment_id, new_environment_id};
use lapse_store::{DeliveryRecord, NewDelivery, NewEvent, WebhookRecord};
use serde::{Deserialize, Serialize};

use super::{address, events};
use crate::app::{App, AppError};
use crate::auth::Caller;

/// Most hooks one tenant (or the operator) may have.
pub const MAX_HOOKS_PER_TENANT: usize = 50;

/// `POST /v1/webhooks`.
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// `http(s)://host/...`: public addresses only unless the operator allows private ones.
    pub url: String,
    /// Event names, or `["*"]`.
    pub events: Vec<String>,
    /// 16 to 256 printable ASCII characters; one is generated when absent.
    #[serde(default)]
    pub secret: Option<String>,
    /// Admin only: the tenant whose events it reports (none: every tenant's).
    #[serde(default)]
    pub tenant: Option<String>,
}

/// A hook as the API shows it (never its secret, but once when it is made).
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    /// `null`: the operator's hook (every tenant's events).
    pub tenant: Option<String>,
    /// `api` or `config`.
    pub source: String,
    /// Failed attempts since the last delivered one.
    pub consecutive_failures: u32,
    pub created_at: String,
    /// Only in the answer that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<&WebhookRecord> for WebhookView {
    fn from(h: &WebhookRecord) -> Self {
        WebhookView {
            id: h.id.clone(),
            url: h.url.clone(),
            events: h.events.clone(),
            tenant: h.tenant.clone().filter(|t| !t.is_empty()),
            source: h.source.clone(),
            consecutive_failures: h.failures,
            created_at: lapse_core::format_millis(h.created_at),
            secret: None,
        }
    }
}

/// `GET /v1/webhooks`.
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

/// One delivery.
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: String,
    pub webhook_id: String,
    pub event: String,
    pub environment_id: Option<String>,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: u32,
    pub response_code: Option<u16>,
    pub error: Option<String>,
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
    pub created_at: String,
}

impl From<&DeliveryRecord> for DeliveryView {
    fn from(d: &DeliveryRecord) -> Self {
        DeliveryView {
            id: d.id.clone(),
            webhook_id: d.webhook_id.clone(),
            event: d.event.clone(),
            environment_id: d.environment_id.clone(),
            status: d.status.clone(),
            attempts: d.attempts,
            response_code: d.response_code,
            error: d.error.clone(),
            next_attempt_at: d.next_attempt_at.filter(|_| d.status == "pending").map(lapse_core::format_millis),
            delivered_at: d.delivered_at.map(lapse_core::format_millis),
            created_at: lapse_core::format_millis(d.created_at),
        }
    }
}

/// `GET /v1/webhooks/{id}/deliveries`.
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
}

fn invalid(field: &str, message: impl Into<String>) -> AppError {
    AppError::Invalid(lapse_core::validate::FieldError { field: field.to_owned(), message: message.into() })
}

fn not_found(id: &str) -> AppError {
    let shown: String = id.chars().take(64).collect();
    AppError::NoWebhook(shown)
}

/// A fresh secret: 32 random bytes, hex.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    // The OS random source does not fail on Linux once booted.
    getrandom::fill(&mut bytes).expect("the OS random source");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("whsec_{hex}")
}

/// Checks a secret given by a user or the config file.
pub fn check_secret(secret: &str) -> Result<(), String> {
    if !(16..=256).contains(&secret.len()) || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("16 to 256 printable ASCII characters, no spaces".into());
    }
    Ok(())
}

impl App {
    /// Registers a hook for the caller's tenant (the admin's: the given tenant or none).
    pub async fn create_webhook(&self, req: CreateWebhook, caller: &Caller) -> Result<WebhookView, AppError> {
        let tenant = match (caller.scope(), req.tenant) {
            (Some(own), None) => Some(own.to_owned()),
            (Some(_), Some(_)) => return Err(invalid("tenant", "set by the server from the key")),
            (None, Some(t)) => {
                if self.cx.store.tenant(&t).await?.is_none() {
                    return Err(invalid("tenant", format!("no tenant {:?}", t.chars().take(64).collect::<String>())));
                }
                Some(t)
            }
            (None, None) => None,
        };
        let url = address::parse_url(&req.url).map_err(|e| invalid("url", e.to_string()))?;
        let wanted = events::check_names(&req.events).map_err(|e| invalid("events", e))?;
        let secret = match req.secret {
            Some(s) => {
                check_secret(&s).map_err(|e| invalid("secret", e))?;
                s
            }
            None => new_secret(),
        };
        address::resolve_checked(&url, self.cx.config.webhooks.allow_private)
            .await
            .map_err(|e| invalid("url", e.to_string()))?;
        let held = self.cx.store.list_webhooks(tenant.as_deref(), None, MAX_HOOKS_PER_TENANT as u32 + 1).await?;
        let held = held.iter().filter(|h| h.tenant == tenant).count();
        if held >= MAX_HOOKS_PER_TENANT {
            return Err(AppError::Conflict(format!("at most {MAX_HOOKS_PER_TENANT} webhooks per tenant")));
        }
        let record = WebhookRecord {
            id: new_environment_id(),
            tenant: tenant.clone(),
            url: url.to_string(),
            events: wanted,
            secret: secret.clone(),
            source: "api".into(),
            name: None,
            cursor: 0,
            failures: 0,
            created_at: lapse_core::now_millis(),
        };
        let event = NewEvent::of_tenant(
            tenant.as_deref().unwrap_or(""),
            &caller.actor(),
            "create_webhook",
            "ok",
            format!("webhook {} to {}", record.id, record.url),
        );
        let made = self.cx.store.create_webhook(&record, event).await?;
        Ok(WebhookView { secret: Some(secret), ..WebhookView::from(&made) })
    }

    /// The hook, if the caller may see it.
    pub async fn get_webhook(&self, id: &str, caller: &Caller) -> Result<WebhookRecord, AppError> {
        if !is_environment_id(id) {
            return Err(not_found(id));
        }
        match self.cx.store.get_webhook(id).await? {
            Some(h) if caller.scope().is_none_or(|t| h.tenant.as_deref() == Some(t)) => Ok(h),
            _ => Err(not_found(id)),
        }
    }

    pub async fn list_webhooks(
        &self,
        after: Option<&str>,
        limit: u32,
        caller: &Caller,
    ) -> Result<Vec<WebhookRecord>, AppError> {
        Ok(self.cx.store.list_webhooks(caller.scope(), after, limit).await?)
    }

    pub async fn delete_webhook(&self, id: &str, caller: &Caller) -> Result<(), AppError> {
        let hook = self.get_webhook(id, caller).await?;
        if hook.source == "config" {
            return Err(AppError::Conflict("this webhook is the config file's; remove it there".into()));
        }
        let event = NewEvent::of_tenant(
            hook.tenant.as_deref().unwrap_or(""),
            &caller.actor(),
            "delete_webhook",
            "ok",
            format!("webhook {id}"),
        );
        if !self.cx.store.delete_webhook(id, caller.scope(), event).await? {
            return Err(not_found(id));
        }
        Ok(())
    }

    pub async fn webhook_deliveries(
        &self,
        id: &str,
        after: Option<&str>,
        limit: u32,
        caller: &Caller,
    ) -> Result<Vec<DeliveryRecord>, AppError> {
        let hook = self.get_webhook(id, caller).await?;
        Ok(self.cx.store.list_deliveries(&hook.id, after, limit).await?)
    }

    /// Queues a `ping` delivery to the hook and wakes the worker.
    pub async fn test_webhook(&self, id: &str, caller: &Caller) -> Result<DeliveryView, AppError> {
        let hook = self.get_webhook(id, caller).await?;
        let delivery_id = new_environment_id();
        let now = lapse_core::now_millis();
        let body = serde_json::json!({
            "id": delivery_id,
            "event": "ping",
            "created_at": lapse_core::format_millis(now),
            "environment": null,
            "tenant": hook.tenant.clone().filter(|t| !t.is_empty()),
        })
        .to_string();
        let delivery =
            NewDelivery { id: delivery_id.clone(), seq: None, event: "ping".into(), environment_id: None, body };
        self.cx.store.add_delivery(&hook.id, &delivery).await?;
        self.cx.webhooks.wake.notify_one();
        Ok(DeliveryView {
            id: delivery_id,
            webhook_id: hook.id,
            event: "ping".into(),
            environment_id: None,
            status: "pending".into(),
            attempts: 0,
            response_code: None,
            error: None,
            next_attempt_at: Some(lapse_core::format_millis(now)),
            delivered_at: None,
            created_at: lapse_core::format_millis(now),
        })
    }
}
