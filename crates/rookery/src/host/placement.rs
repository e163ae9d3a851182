//! The placement seam: which node owns an object.
//!
//! A single node owns every object ([`LocalPlacement`]). In a cluster an implementation answers
//! from leased ownership records, and requests (`Stub::fetch`) for objects another node owns go
//! to it through a [`Forwarder`].

use std::future::Future;
use std::pin::Pin;

use crate::call::{Call, Reply};
use crate::error::Result;
use crate::id::ObjectId;
use crate::request::Request;
use crate::response::Response;

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// On this node.
    Local,
    /// On another node, by its address.
    Remote(String),
}

/// Decides which node owns an object.
pub trait Placement: Send + Sync + 'static {
    /// The owner of object `id` of `class`.
    fn locate(&self, class: &str, id: &ObjectId) -> Location;
}

/// Every object lives on this node.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalPlacement;

impl Placement for LocalPlacement {
    fn locate(&self, _class: &str, _id: &ObjectId) -> Location {
        Location::Local
    }
}

/// The answer of a forwarded request (`T` = [`Response`]) or typed call (`T` = [`Reply`]).
pub type Forwarded<T = Response> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'static>>;

/// Sends requests for objects this node does not own to the node that does.
pub trait Forwarder: Send + Sync + 'static {
    /// Sends `req` for object `id` of class `class` to the node at `address`, which serves it
    /// without forwarding it again.
    fn fetch(&self, address: &str, class: &str, id: &ObjectId, req: Request) -> Forwarded;

    /// Sends typed call `call` the same way; by default it is refused with
    /// [`Error::Elsewhere`](crate::Error::Elsewhere).
    fn call(&self, address: &str, _class: &str, _id: &ObjectId, _call: Call) -> Forwarded<Reply> {
        let address = address.to_string();
        Box::pin(async move { Err(crate::error::Error::Elsewhere(address)) })
    }
}
