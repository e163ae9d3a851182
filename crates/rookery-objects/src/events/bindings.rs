//! The binding names the events platform's worker and status page reach its objects by (as
//! examples/events.toml binds them).

/// The binding of the namespaces' `Subscriptions` objects.
pub const EVENTS_BINDING: &str = "EVENTS";
/// The binding of the namespaces' `SchemaRegistry` objects.
pub const SCHEMAS_BINDING: &str = "SCHEMAS";
/// The binding of the tenants' `AdvancedRateLimiter` objects.
pub const LIMITER_BINDING: &str = "EVENTS_LIMITER";
