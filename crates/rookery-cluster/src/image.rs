//! An object's database as the cluster holds it: its snapshot, then every commit after it, in
//! order; and compaction, which folds those commits into a new snapshot.

use rookery::PackedPages;
use tokio_postgres::{Client, IsolationLevel};

use crate::error::ClusterError;

/// A position in an object's commits: (epoch, sequence). Every activation raises the epoch,
/// and sequences rise within one.
pub(crate) type Position = (i64, i64);

/// An object's database rebuilt from the cluster.
#[derive(Debug, Default)]
pub(crate) struct Image {
    /// The database file's bytes (empty: it stores nothing).
    pub(crate) bytes: Vec<u8>,
    /// The last commit folded in, if any.
    pub(crate) at: Option<Position>,
    /// How many commit rows followed the snapshot.
    pub(crate) commits: usize,
}

/// Rebuilds `class`/`object`'s database: the snapshot and the commits after it, read in one
/// consistent view (a compaction between the two reads would otherwise hide commits).
pub(crate) async fn load(
    client: &mut Client,
    class: &str,
    object: &str,
) -> Result<Image, ClusterError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let mut image = Image::default();
    let mut after: Position = (i64::MIN, i64::MIN);
    if let Some(row) = tx
        .query_opt(
            "SELECT epoch, seq, db_pages, page_count, image FROM rookery_snapshots
             WHERE class = $1 AND object = $2",
            &[&class, &object],
        )
        .await?
    {
        after = (row.get(0), row.get(1));
        apply(&mut image.bytes, row.get(3), row.get(4), row.get(2))?;
        image.at = Some(after);
    }
    let rows = tx
        .query(
            "SELECT epoch, seq, db_pages, page_count, pages FROM rookery_commits
             WHERE class = $1 AND object = $2 AND (epoch, seq) > ($3, $4)
             ORDER BY epoch, seq",
            &[&class, &object, &after.0, &after.1],
        )
        .await?;
    for row in &rows {
        apply(&mut image.bytes, row.get(3), row.get(4), row.get(2))?;
        image.at = Some((row.get(0), row.get(1)));
    }
    image.commits = rows.len();
    tx.commit().await?;
    Ok(image)
}

/// The position of `class`/`object`'s last commit (or its snapshot's), if any.
pub(crate) async fn last_position(
    client: &Client,
    class: &str,
    object: &str,
) -> Result<Option<Position>, ClusterError> {
    let row = client
        .query_opt(
            "SELECT epoch, seq FROM (
                 (SELECT epoch, seq FROM rookery_commits WHERE class = $1 AND object = $2
                  ORDER BY epoch DESC, seq DESC LIMIT 1)
                 UNION ALL
                 SELECT epoch, seq FROM rookery_snapshots WHERE class = $1 AND object = $2
             ) p ORDER BY epoch DESC, seq DESC LIMIT 1",
            &[&class, &object],
        )
        .await?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

/// Folds `image` (read by [`load`]) into the object's snapshot and removes the commits it
/// holds. Any node may do it: it adds nothing that was not committed, and a snapshot never
/// moves back.
pub(crate) async fn compact(
    client: &mut Client,
    class: &str,
    object: &str,
    image: &Image,
) -> Result<(), ClusterError> {
    let Some(at) = image.at else { return Ok(()) };
    let packed = rookery::pack_image(&image.bytes);
    let db_pages = i32::try_from(image.bytes.len() / rookery::PAGE_BYTES)
        .map_err(|_| ClusterError::Data("a database too large to snapshot".into()))?;
    let count = i32::try_from(packed.count())
        .map_err(|_| ClusterError::Data("a database too large to snapshot".into()))?;
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO rookery_snapshots AS s (class, object, epoch, seq, db_pages, page_count, image)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (class, object) DO UPDATE SET epoch = EXCLUDED.epoch, seq = EXCLUDED.seq,
             db_pages = EXCLUDED.db_pages, page_count = EXCLUDED.page_count, image = EXCLUDED.image
         WHERE (s.epoch, s.seq) < (EXCLUDED.epoch, EXCLUDED.seq)",
        &[&class, &object, &at.0, &at.1, &db_pages, &count, &packed.bytes()],
    )
    .await?;
    tx.execute(
        "DELETE FROM rookery_commits WHERE class = $1 AND object = $2 AND (epoch, seq) <= ($3, $4)",
        &[&class, &object, &at.0, &at.1],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Applies one commit's (or snapshot's) packed pages to `bytes`.
fn apply(bytes: &mut Vec<u8>, count: i32, pages: &[u8], db_pages: i32) -> Result<(), ClusterError> {
    let (Ok(count), Ok(db_pages)) = (u32::try_from(count), u32::try_from(db_pages)) else {
        return Err(ClusterError::Data(
            "a commit with a negative page count".into(),
        ));
    };
    PackedPages::new(count, pages)
        .apply(bytes, db_pages)
        .map_err(|e| ClusterError::Data(format!("a commit whose pages do not unpack: {e}")))
}
