//! What an object's own SQL may do.
//!
//! The runtime owns transactions (a turn is one transaction), the durability settings and the
//! `_rookery_*` tables. SQLite consults this policy while it prepares each statement of the
//! object's SQL, so a refused statement never runs at all.

use std::sync::Mutex;

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

/// Prefix of the names the runtime keeps for itself.
pub(crate) const RESERVED_PREFIX: &str = "_rookery_";

/// Pragmas that only read, or that change nothing about durability or the file's layout.
const ALLOWED_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "foreign_keys",
    "defer_foreign_keys",
    "integrity_check",
    "quick_check",
    "page_count",
    "freelist_count",
    "data_version",
    "user_version",
    "optimize",
    "collation_list",
    "function_list",
    "pragma_list",
];

/// Pragmas that may be read but not set.
const READ_ONLY_PRAGMAS: &[&str] = &["page_size", "schema_version", "max_page_count"];

/// The authorizer's judgement, and why it last refused.
#[derive(Default)]
pub(crate) struct Policy {
    refusal: Mutex<Option<String>>,
}

/// Whether `name` starts with the reserved prefix, in any case.
pub(crate) fn reserved(name: &str) -> bool {
    name.as_bytes()
        .get(..RESERVED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes()))
}

impl Policy {
    /// Forgets the last refusal.
    pub(crate) fn clear(&self) {
        *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Why the last statement was refused, if it was.
    pub(crate) fn take_refusal(&self) -> Option<String> {
        self.refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn refuse(&self, why: String) -> Authorization {
        let mut refusal = self.refusal.lock().unwrap_or_else(|e| e.into_inner());
        refusal.get_or_insert(why);
        Authorization::Deny
    }

    /// Allows or denies one action of a statement being prepared.
    pub(crate) fn judge(&self, ctx: &AuthContext<'_>) -> Authorization {
        use AuthAction as A;
        // A temp table can shadow the runtime's tables for unqualified names, and is lost at
        // eviction anyway: the object's SQL lives in its database only.
        if ctx.database_name == Some("temp")
            || matches!(
                ctx.action,
                A::CreateTempTable { .. }
                    | A::CreateTempIndex { .. }
                    | A::CreateTempTrigger { .. }
                    | A::CreateTempView { .. }
            )
        {
            return self
                .refuse("temporary tables, views, indexes and triggers are not allowed".into());
        }
        let name = match ctx.action {
            A::Transaction { .. } | A::Savepoint { .. } => {
                return self.refuse(
                    "transactions are managed by the runtime: a turn is one transaction; use storage.transaction() for a nested one".into(),
                );
            }
            A::Attach { .. } | A::Detach { .. } => {
                return self.refuse("ATTACH and DETACH are not allowed".into());
            }
            A::Pragma {
                pragma_name,
                pragma_value,
            } => {
                let p = pragma_name.to_ascii_lowercase();
                let allowed = ALLOWED_PRAGMAS.contains(&p.as_str())
                    || (READ_ONLY_PRAGMAS.contains(&p.as_str()) && pragma_value.is_none());
                if allowed {
                    return Authorization::Allow;
                }
                return self.refuse(format!(
                    "PRAGMA {pragma_name} is not allowed: the runtime owns durability, journaling and the file's layout"
                ));
            }
            A::CreateTable { table_name }
            | A::CreateTempTable { table_name }
            | A::DropTable { table_name }
            | A::DropTempTable { table_name }
            | A::Insert { table_name }
            | A::Delete { table_name }
            | A::Update { table_name, .. }
            | A::Read { table_name, .. }
            | A::Analyze { table_name }
            | A::AlterTable { table_name, .. }
            | A::CreateVtable { table_name, .. }
            | A::DropVtable { table_name, .. } => table_name,
            A::CreateIndex {
                index_name,
                table_name,
            }
            | A::CreateTempIndex {
                index_name,
                table_name,
            }
            | A::DropIndex {
                index_name,
                table_name,
            }
            | A::DropTempIndex {
                index_name,
                table_name,
            } => {
                if reserved(index_name) {
                    index_name
                } else {
                    table_name
                }
            }
            A::CreateTrigger {
                trigger_name,
                table_name,
            }
            | A::CreateTempTrigger {
                trigger_name,
                table_name,
            }
            | A::DropTrigger {
                trigger_name,
                table_name,
            }
            | A::DropTempTrigger {
                trigger_name,
                table_name,
            } => {
                if reserved(trigger_name) {
                    trigger_name
                } else {
                    table_name
                }
            }
            A::CreateView { view_name }
            | A::CreateTempView { view_name }
            | A::DropView { view_name }
            | A::DropTempView { view_name } => view_name,
            A::Reindex { index_name } => index_name,
            A::Function { function_name } => {
                if function_name.eq_ignore_ascii_case("load_extension") {
                    return self.refuse("load_extension() is not allowed".into());
                }
                return Authorization::Allow;
            }
            _ => return Authorization::Allow,
        };
        if reserved(name) {
            return self.refuse(format!(
                "{name:?}: names starting with {RESERVED_PREFIX} belong to the runtime"
            ));
        }
        Authorization::Allow
    }
}
