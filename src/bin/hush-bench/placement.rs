//! Where a server the bench starts keeps its data and how much CPU it
//! gets: a fresh PostgreSQL database per target (`--postgres`), dropped
//! afterwards, and a cgroup CPU quota per `hush serve` child
//! (`--cpu-quota`), so that N nodes on a 2-core machine each get the same
//! share and the scaling figures mean something.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// A database of its own on the PostgreSQL server of `--postgres`.
pub struct BenchDatabase {
    name: String,
    admin: String,
    /// What `hush serve --db` takes.
    pub url: String,
}

impl BenchDatabase {
    pub async fn create(admin: &str) -> Result<Self> {
        let name = format!("hush_bench_{}", random_hex());
        let url = hush::store::with_database(admin, &name).context("a postgres:// URL")?;
        let mut conn = PgConnection::connect(admin)
            .await
            .context("connecting to the --postgres server")?;
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {name}"))?;
        let _ = conn.close().await;
        Ok(Self {
            name,
            admin: admin.to_owned(),
            url,
        })
    }

    /// Drops the database with whatever is still connected to it.
    pub async fn drop_now(self) {
        let dropped = async {
            let mut conn = PgConnection::connect(&self.admin).await?;
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut conn)
            .await?;
            let _ = conn.close().await;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = dropped {
            eprintln!("could not drop bench database {}: {e:#}", self.name);
        }
    }
}

/// A cgroup holding one process to `quota` of one CPU (cgroup v2's
/// `cpu.max`, or v1's `cpu.cfs_quota_us`), removed on `remove`.
pub struct CpuGroup {
    dir: PathBuf,
}

const PERIOD_US: u64 = 100_000;

impl CpuGroup {
    pub fn hold(pid: u32, quota: f64) -> Result<Self> {
        if !(0.01..=64.0).contains(&quota) {
            bail!("--cpu-quota is a share of one CPU between 0.01 and 64");
        }
        let quota_us = (quota * PERIOD_US as f64).round() as u64;
        let name = format!("hush-bench-{}", random_hex());
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let (dir, limits) = if v2.join("cgroup.controllers").is_file() {
            (
                v2.join(&name),
                vec![("cpu.max", format!("{quota_us} {PERIOD_US}"))],
            )
        } else {
            (
                v2.join("cpu").join(&name),
                vec![
                    ("cpu.cfs_period_us", PERIOD_US.to_string()),
                    ("cpu.cfs_quota_us", quota_us.to_string()),
                ],
            )
        };
        std::fs::create_dir(&dir).with_context(|| {
            format!(
                "creating {} (--cpu-quota needs a writable cgroup CPU controller, usually root)",
                dir.display()
            )
        })?;
        let group = Self { dir };
        for (file, value) in limits {
            std::fs::write(group.dir.join(file), &value)
                .with_context(|| format!("writing {value} to {file}"))?;
        }
        std::fs::write(group.dir.join("cgroup.procs"), pid.to_string())
            .context("moving the server into its cgroup")?;
        Ok(group)
    }

    /// Call once the process has exited (a cgroup with members stays).
    pub fn remove(self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn random_hex() -> String {
    let mut tag = [0u8; 6];
    getrandom::fill(&mut tag).expect("the OS random source works");
    tag.iter().map(|b| format!("{b:02x}")).collect()
}
