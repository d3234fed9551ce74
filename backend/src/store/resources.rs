//! Scopes, monitors and queries: rows, lifecycle transitions and tags.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Arg, Store, StoreError, bind_all, is_unique_violation};
use crate::model::{Monitor, QueryParams, QueryRecord, Scope, Tags};

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn scope_from_row(r: &AnyRow) -> Result<Scope, StoreError> {
    Ok(Scope {
        scope_id: r.try_get("scope_id")?,
        scope_arn: r.try_get("scope_arn")?,
        status: r.try_get("status")?,
        targets: from_json("scope targets", &r.try_get::<String, _>("targets_json")?)?,
        tags: from_json("scope tags", &r.try_get::<String, _>("tags_json")?)?,
        client_token: r.try_get("client_token")?,
        request_hash: r.try_get("request_hash")?,
        created_at_ms: r.try_get("created_at_ms")?,
    })
}

fn monitor_from_row(r: &AnyRow) -> Result<Monitor, StoreError> {
    Ok(Monitor {
        monitor_name: r.try_get("monitor_name")?,
        monitor_arn: r.try_get("monitor_arn")?,
        status: r.try_get("status")?,
        scope_arn: r.try_get("scope_arn")?,
        local_resources: from_json("monitor local resources", &r.try_get::<String, _>("local_json")?)?,
        remote_resources: from_json("monitor remote resources", &r.try_get::<String, _>("remote_json")?)?,
        tags: from_json("monitor tags", &r.try_get::<String, _>("tags_json")?)?,
        client_token: r.try_get("client_token")?,
        request_hash: r.try_get("request_hash")?,
        created_at_ms: r.try_get("created_at_ms")?,
        modified_at_ms: r.try_get("modified_at_ms")?,
    })
}

fn query_from_row(r: &AnyRow) -> Result<QueryRecord, StoreError> {
    Ok(QueryRecord {
        query_id: r.try_get("query_id")?,
        params: from_json("query parameters", &r.try_get::<String, _>("params_json")?)?,
        status: r.try_get("status")?,
        unit: r.try_get("unit")?,
        result_json: r.try_get("result_json")?,
        error: r.try_get("error")?,
        updated_at_ms: r.try_get("updated_at_ms")?,
    })
}

const SCOPE_COLS: &str =
    "scope_id, scope_arn, status, targets_json, tags_json, client_token, request_hash, created_at_ms";
const MONITOR_COLS: &str = "monitor_name, monitor_arn, status, scope_arn, local_json, remote_json, tags_json, \
     client_token, request_hash, created_at_ms, modified_at_ms";

impl Store {
    async fn exec(&self, sql: &str, args: &[Arg]) -> Result<u64, StoreError> {
        let sql = self.sql(sql);
        let q = bind_all(sqlx::query(&sql), args);
        Ok(q.execute(&self.pool).await?.rows_affected())
    }

    async fn fetch(&self, sql: &str, args: &[Arg]) -> Result<Vec<AnyRow>, StoreError> {
        let sql = self.sql(sql);
        let q = bind_all(sqlx::query(&sql), args);
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// Moves resources along their lifecycle: PENDING monitors become ACTIVE and IN_PROGRESS
    /// scopes SUCCEEDED `delay_ms` after creation; DELETING monitors and DEACTIVATING scopes
    /// disappear `delay_ms` after the delete. Run before reads, so every replica agrees.
    pub async fn advance_lifecycle(&self, now_ms: i64, delay_ms: i64) -> Result<(), StoreError> {
        let due = Arg::I(now_ms - delay_ms);
        // A read first: most calls have nothing to move, and an UPDATE would take SQLite's
        // write lock (waiting behind ingest) even when it matches no row.
        let pending = self
            .fetch(
                "SELECT (SELECT COUNT(*) FROM monitors WHERE status IN ('PENDING', 'DELETING') AND status_changed_at_ms <= ?) \
                 + (SELECT COUNT(*) FROM scopes WHERE status IN ('IN_PROGRESS', 'DEACTIVATING') AND status_changed_at_ms <= ?) AS n",
                &[due.clone(), due.clone()],
            )
            .await?;
        if pending.first().map(|r| r.try_get::<i64, _>("n")).transpose()?.unwrap_or(0) == 0 {
            return Ok(());
        }
        self.exec(
            "UPDATE monitors SET status = 'ACTIVE', status_changed_at_ms = ? WHERE status = 'PENDING' AND status_changed_at_ms <= ?",
            &[Arg::I(now_ms), due.clone()],
        )
        .await?;
        self.exec(
            "DELETE FROM monitors WHERE status = 'DELETING' AND status_changed_at_ms <= ?",
            std::slice::from_ref(&due),
        )
        .await?;
        self.exec(
            "UPDATE scopes SET status = 'SUCCEEDED', status_changed_at_ms = ? WHERE status = 'IN_PROGRESS' AND status_changed_at_ms <= ?",
            &[Arg::I(now_ms), due.clone()],
        )
        .await?;
        self.exec("DELETE FROM scopes WHERE status = 'DEACTIVATING' AND status_changed_at_ms <= ?", &[due]).await?;
        Ok(())
    }

    // ---- scopes ----

    pub async fn insert_scope(&self, s: &Scope) -> Result<(), StoreError> {
        let r = self
            .exec(
                &format!("INSERT INTO scopes ({SCOPE_COLS}, status_changed_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                &[
                    Arg::S(s.scope_id.clone()),
                    Arg::S(s.scope_arn.clone()),
                    Arg::S(s.status.clone()),
                    Arg::S(json(&s.targets)),
                    Arg::S(json(&s.tags)),
                    Arg::N(s.client_token.clone()),
                    Arg::S(s.request_hash.clone()),
                    Arg::I(s.created_at_ms),
                    Arg::I(s.created_at_ms),
                ],
            )
            .await;
        match r {
            Err(StoreError::Db(e)) if is_unique_violation(&e) => Err(StoreError::Duplicate),
            r => r.map(|_| ()),
        }
    }

    pub async fn get_scope(&self, scope_id: &str) -> Result<Option<Scope>, StoreError> {
        let rows = self
            .fetch(&format!("SELECT {SCOPE_COLS} FROM scopes WHERE scope_id = ?"), &[Arg::S(scope_id.into())])
            .await?;
        rows.first().map(scope_from_row).transpose()
    }

    pub async fn get_scope_by_arn(&self, arn: &str) -> Result<Option<Scope>, StoreError> {
        let rows =
            self.fetch(&format!("SELECT {SCOPE_COLS} FROM scopes WHERE scope_arn = ?"), &[Arg::S(arn.into())]).await?;
        rows.first().map(scope_from_row).transpose()
    }

    pub async fn get_scope_by_token(&self, token: &str) -> Result<Option<Scope>, StoreError> {
        let rows = self
            .fetch(&format!("SELECT {SCOPE_COLS} FROM scopes WHERE client_token = ?"), &[Arg::S(token.into())])
            .await?;
        rows.first().map(scope_from_row).transpose()
    }

    /// Scopes ordered by id, after `after` (keyset pagination), at most `limit`.
    pub async fn list_scopes(&self, after: Option<&str>, limit: u32) -> Result<Vec<Scope>, StoreError> {
        let rows = self
            .fetch(
                &format!("SELECT {SCOPE_COLS} FROM scopes WHERE scope_id > ? ORDER BY scope_id LIMIT ?"),
                &[Arg::S(after.unwrap_or("").into()), Arg::I(limit as i64)],
            )
            .await?;
        rows.iter().map(scope_from_row).collect()
    }

    pub async fn count_scopes(&self) -> Result<i64, StoreError> {
        let rows = self.fetch("SELECT COUNT(*) AS n FROM scopes", &[]).await?;
        Ok(rows.first().map(|r| r.try_get::<i64, _>("n")).transpose()?.unwrap_or(0))
    }

    pub async fn update_scope_targets(&self, s: &Scope) -> Result<(), StoreError> {
        self.exec(
            "UPDATE scopes SET targets_json = ? WHERE scope_id = ?",
            &[Arg::S(json(&s.targets)), Arg::S(s.scope_id.clone())],
        )
        .await?;
        Ok(())
    }

    pub async fn deactivate_scope(&self, scope_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        Ok(self
            .exec(
                "UPDATE scopes SET status = 'DEACTIVATING', status_changed_at_ms = ? WHERE scope_id = ? AND status <> 'DEACTIVATING'",
                &[Arg::I(now_ms), Arg::S(scope_id.into())],
            )
            .await?
            > 0)
    }

    // ---- monitors ----

    pub async fn insert_monitor(&self, m: &Monitor) -> Result<(), StoreError> {
        let r = self
            .exec(
                &format!("INSERT INTO monitors ({MONITOR_COLS}, status_changed_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                &[
                    Arg::S(m.monitor_name.clone()),
                    Arg::S(m.monitor_arn.clone()),
                    Arg::S(m.status.clone()),
                    Arg::S(m.scope_arn.clone()),
                    Arg::S(json(&m.local_resources)),
                    Arg::S(json(&m.remote_resources)),
                    Arg::S(json(&m.tags)),
                    Arg::N(m.client_token.clone()),
                    Arg::S(m.request_hash.clone()),
                    Arg::I(m.created_at_ms),
                    Arg::I(m.modified_at_ms),
                    Arg::I(m.created_at_ms),
                ],
            )
            .await;
        match r {
            Err(StoreError::Db(e)) if is_unique_violation(&e) => Err(StoreError::Duplicate),
            r => r.map(|_| ()),
        }
    }

    pub async fn get_monitor(&self, name: &str) -> Result<Option<Monitor>, StoreError> {
        let rows = self
            .fetch(&format!("SELECT {MONITOR_COLS} FROM monitors WHERE monitor_name = ?"), &[Arg::S(name.into())])
            .await?;
        rows.first().map(monitor_from_row).transpose()
    }

    pub async fn get_monitor_by_arn(&self, arn: &str) -> Result<Option<Monitor>, StoreError> {
        let rows = self
            .fetch(&format!("SELECT {MONITOR_COLS} FROM monitors WHERE monitor_arn = ?"), &[Arg::S(arn.into())])
            .await?;
        rows.first().map(monitor_from_row).transpose()
    }

    pub async fn get_monitor_by_token(&self, token: &str) -> Result<Option<Monitor>, StoreError> {
        let rows = self
            .fetch(&format!("SELECT {MONITOR_COLS} FROM monitors WHERE client_token = ?"), &[Arg::S(token.into())])
            .await?;
        rows.first().map(monitor_from_row).transpose()
    }

    /// Monitors ordered by name after `after`, optionally only those in `status`.
    pub async fn list_monitors(
        &self,
        status: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Monitor>, StoreError> {
        let mut sql = format!("SELECT {MONITOR_COLS} FROM monitors WHERE monitor_name > ?");
        let mut args = vec![Arg::S(after.unwrap_or("").into())];
        if let Some(s) = status {
            sql.push_str(" AND status = ?");
            args.push(Arg::S(s.into()));
        }
        sql.push_str(" ORDER BY monitor_name LIMIT ?");
        args.push(Arg::I(limit as i64));
        self.fetch(&sql, &args).await?.iter().map(monitor_from_row).collect()
    }

    pub async fn count_monitors(&self) -> Result<i64, StoreError> {
        let rows = self.fetch("SELECT COUNT(*) AS n FROM monitors", &[]).await?;
        Ok(rows.first().map(|r| r.try_get::<i64, _>("n")).transpose()?.unwrap_or(0))
    }

    pub async fn count_monitors_in_scope(&self, scope_arn: &str) -> Result<i64, StoreError> {
        let rows =
            self.fetch("SELECT COUNT(*) AS n FROM monitors WHERE scope_arn = ?", &[Arg::S(scope_arn.into())]).await?;
        Ok(rows.first().map(|r| r.try_get::<i64, _>("n")).transpose()?.unwrap_or(0))
    }

    pub async fn update_monitor_resources(&self, m: &Monitor) -> Result<(), StoreError> {
        self.exec(
            "UPDATE monitors SET local_json = ?, remote_json = ?, modified_at_ms = ? WHERE monitor_name = ?",
            &[
                Arg::S(json(&m.local_resources)),
                Arg::S(json(&m.remote_resources)),
                Arg::I(m.modified_at_ms),
                Arg::S(m.monitor_name.clone()),
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn mark_monitor_deleting(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        Ok(self
            .exec(
                "UPDATE monitors SET status = 'DELETING', status_changed_at_ms = ?, modified_at_ms = ? WHERE monitor_name = ? AND status <> 'DELETING'",
                &[Arg::I(now_ms), Arg::I(now_ms), Arg::S(name.into())],
            )
            .await?
            > 0)
    }

    // ---- tags ----

    /// Replaces the tags of the monitor or scope with this ARN; false when there is none.
    pub async fn set_tags(&self, arn: &str, tags: &Tags) -> Result<bool, StoreError> {
        let n = self
            .exec("UPDATE monitors SET tags_json = ? WHERE monitor_arn = ?", &[Arg::S(json(tags)), Arg::S(arn.into())])
            .await?;
        if n > 0 {
            return Ok(true);
        }
        let n = self
            .exec("UPDATE scopes SET tags_json = ? WHERE scope_arn = ?", &[Arg::S(json(tags)), Arg::S(arn.into())])
            .await?;
        Ok(n > 0)
    }

    // ---- queries ----

    pub async fn insert_query(&self, id: &str, p: &QueryParams, now_ms: i64) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO queries (query_id, kind, owner, status, params_json, created_at_ms, updated_at_ms) VALUES (?, ?, ?, 'QUEUED', ?, ?, ?)",
            &[
                Arg::S(id.into()),
                Arg::S(p.kind.as_str().into()),
                Arg::S(p.owner.clone()),
                Arg::S(json(p)),
                Arg::I(now_ms),
                Arg::I(now_ms),
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn get_query(&self, id: &str) -> Result<Option<QueryRecord>, StoreError> {
        let rows = self
            .fetch(
                "SELECT query_id, status, params_json, unit, result_json, error, updated_at_ms FROM queries WHERE query_id = ?",
                &[Arg::S(id.into())],
            )
            .await?;
        rows.first().map(query_from_row).transpose()
    }

    /// Moves a query to `to` if it is in one of `from`; true when it moved.
    #[allow(clippy::too_many_arguments)]
    pub async fn transition_query(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        unit: Option<&str>,
        result_json: Option<String>,
        error: Option<String>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let placeholders = vec!["?"; from.len()].join(", ");
        let mut args = vec![
            Arg::S(to.into()),
            Arg::N(unit.map(str::to_string)),
            Arg::N(result_json),
            Arg::N(error),
            Arg::I(now_ms),
            Arg::S(id.into()),
        ];
        args.extend(from.iter().map(|s| Arg::S(s.to_string())));
        let n = self
            .exec(
                &format!(
                    "UPDATE queries SET status = ?, unit = ?, result_json = ?, error = ?, updated_at_ms = ? WHERE query_id = ? AND status IN ({placeholders})"
                ),
                &args,
            )
            .await?;
        Ok(n > 0)
    }

    /// Drops finished queries older than `before_ms` (results are kept for a day).
    pub async fn expire_queries(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.exec("DELETE FROM queries WHERE updated_at_ms < ?", &[Arg::I(before_ms)]).await
    }
}
