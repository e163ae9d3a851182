//! The trusted headers that carry a caller's verified identity from the gateway to objects.
//!
//! The gateway removes any of these a client sent and sets them from a verified token (or, in
//! demos, from the query); objects read them and trust them.

use http::HeaderName;

/// The caller's user id.
pub const USER_ID: HeaderName = HeaderName::from_static("x-rookery-user-id");
/// The caller's display name.
pub const USER_NAME: HeaderName = HeaderName::from_static("x-rookery-user-name");
/// The caller's permissions, comma-separated.
pub const PERMISSIONS: HeaderName = HeaderName::from_static("x-rookery-permissions");
