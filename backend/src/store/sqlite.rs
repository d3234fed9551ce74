//! The embedded SQLite backend: one file, WAL journal, versioned migrations from
//! `migrations/sqlite`.

use std::time::Duration;

use sqlx::Executor;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;

use super::StoreError;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Turns a file path (or `sqlite://...` URL) into a URL that creates the file when missing.
pub fn url_for(database: &str) -> String {
    let path = database.strip_prefix("sqlite://").or_else(|| database.strip_prefix("sqlite:")).unwrap_or(database);
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let mut url = format!("sqlite://{path}?mode=rwc");
    if !query.is_empty() && !query.contains("mode=") {
        url.push('&');
        url.push_str(query);
    }
    url
}

pub async fn connect(database: &str) -> Result<sqlx::AnyPool, StoreError> {
    let url = url_for(database);
    let pool = AnyPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(60))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA synchronous = NORMAL").await?;
                conn.execute("PRAGMA busy_timeout = 30000").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                Ok(())
            })
        })
        .connect(&url)
        .await
        .map_err(|e| StoreError::Connect(format!("{url}: {e}")))?;
    Ok(pool)
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_create_missing_files() {
        assert_eq!(super::url_for("./flow-backend.db"), "sqlite://./flow-backend.db?mode=rwc");
        assert_eq!(super::url_for("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db?mode=rwc");
    }
}
