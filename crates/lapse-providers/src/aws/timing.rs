//! Counts the time of every EC2 call the provider's client makes, from the SDK's first step to
//! its last (serialising, signing, the round trips and the SDK's own retries): the "time inside
//! `send()`" of [`crate::calls`]. It is an SDK interceptor on the client, so every call is
//! counted, whichever module makes it, and no call site needs to remember to.

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_ec2::config::interceptors::{BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef};
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_types::config_bag::{Storable, StoreReplace};

use crate::calls::CallTimes;

/// The interceptor; its counters are the provider's.
#[derive(Debug)]
pub(super) struct Timing(pub(super) Arc<CallTimes>);

/// When this execution began (kept in the execution's own config bag).
#[derive(Clone, Debug)]
struct Started(Instant);

impl Storable for Started {
    type Storer = StoreReplace<Self>;
}

impl Intercept for Timing {
    fn name(&self) -> &'static str {
        "lapse-call-timing"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.begin();
        cfg.interceptor_state().store_put(Started(Instant::now()));
        Ok(())
    }

    fn read_after_execution(
        &self,
        _context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(Started(at)) = cfg.load::<Started>() {
            let op = cfg.load::<Metadata>().map_or("unknown", |m| m.name());
            self.0.end(op, at.elapsed());
        }
        Ok(())
    }
}
