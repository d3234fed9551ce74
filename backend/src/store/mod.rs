//! Storage: reports and their flows, scopes, monitors and queries, in SQLite (embedded, one file)
//! or PostgreSQL (shared by stateless replicas). Both speak the same SQL through sqlx's `Any`
//! driver; the per-database parts (connection, migrations, placeholders) live in `sqlite` and
//! `postgres`.

pub mod flows;
pub mod postgres;
pub mod resources;
pub mod sqlite;

use sqlx::AnyPool;
use sqlx::any::AnyArguments;
use sqlx::query::Query;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to the database {0}")]
    Connect(String),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("a row with this key already exists")]
    Duplicate,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Which database a store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A bound SQL argument.
#[derive(Clone, Debug)]
pub enum Arg {
    I(i64),
    F(f64),
    S(String),
    N(Option<String>),
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects to `database` (a `postgres://` URL, or a SQLite file path / `sqlite://` URL) and
    /// runs the schema migrations.
    pub async fn open(database: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (pool, backend) = if database.starts_with("postgres://") || database.starts_with("postgresql://") {
            let pool = postgres::connect(database).await?;
            postgres::MIGRATOR.run(&pool).await?;
            (pool, Backend::Postgres)
        } else {
            let pool = sqlite::connect(database).await?;
            sqlite::MIGRATOR.run(&pool).await?;
            (pool, Backend::Sqlite)
        };
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The SQL as this database wants it (all SQL here is written with `?` placeholders).
    pub(crate) fn sql(&self, sql: &str) -> String {
        match self.backend {
            Backend::Sqlite => sql.to_string(),
            Backend::Postgres => postgres::numbered_placeholders(sql),
        }
    }

    /// The schema version (highest applied migration).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        use sqlx::Row;
        let row = sqlx::query("SELECT CAST(MAX(version) AS BIGINT) AS v FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("v")?.unwrap_or(0))
    }
}

pub(crate) fn bind_all<'q>(
    mut q: Query<'q, sqlx::Any, AnyArguments<'q>>,
    args: &[Arg],
) -> Query<'q, sqlx::Any, AnyArguments<'q>> {
    for a in args {
        q = match a {
            Arg::I(v) => q.bind(*v),
            Arg::F(v) => q.bind(*v),
            Arg::S(v) => q.bind(v.clone()),
            Arg::N(v) => q.bind(v.clone()),
        };
    }
    q
}
