//! events.do's CDC and catalog on Rookery (issue 16, item 5; seed 003's `CDCProcessorDO` and
//! `CatalogDO`). docs/EVENTS.md has the HTTP API; this is how it is built.
//!
//! - `processor`: [`CdcProcessor`], one object per collection (`<namespace>/<collection>`):
//!   applies `insert`/`update`/`delete` changes to the current documents, keeps them pending,
//!   and writes them as delta files to the bucket on a schedule.
//! - `catalog`: [`Catalog`], one object per namespace: each delta file becomes a snapshot of its
//!   table, with the table's schema versions; the typed service [`TableCatalog`]. The event
//!   writer's files become snapshots of one more table, [`EVENTS_TABLE`].
//! - `catalog_http`: the catalog's reads, and "the table as of snapshot N" replayed from the
//!   delta files.
//! - `change`: a change as posted and as a line of a delta file; `delta`: the files' names and
//!   encoding (gzip NDJSON) and the bucket's binding; `schema`: schemas inferred from documents
//!   and their evolution; `names`: valid namespace and collection names; `settings`: vars.
//!
//! **The contract between the two.** The processor drops pending changes only after the
//! catalog committed the file holding them, and the catalog commits a file only after it was
//! written. The file's range is fixed (and durable) before it is written, and the catalog
//! answers a repeated commit of a file with the snapshot it already made, so any failure in
//! between ends, after retries, with each change in exactly one committed file.

mod catalog;
mod catalog_http;
mod change;
mod delta;
mod names;
mod processor;
mod schema;
mod settings;
#[cfg(test)]
mod tests;

pub(crate) use catalog::commit_file;
pub use catalog::{
    Catalog, DeltaCommit, EVENTS_TABLE, Snapshot, TableCatalog, TableCatalogStub, TableKind,
};
pub use change::{Change, MAX_ID_BYTES, Op};
pub use delta::BUCKET_BINDING;
pub use processor::{CdcProcessor, CdcStatus, Delta, FILES_PER_FLUSH};
pub(crate) use schema::Observed;
pub use schema::{Field, FieldTypes, MAX_FIELDS, TypeSet};

/// The binding the processors reach the catalog by.
pub const CATALOG_BINDING: &str = "CATALOG";
