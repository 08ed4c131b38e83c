//! A private PostgreSQL cluster for one test: its own data directory and port, so the test may
//! stop and start it (a database restart in the middle of a run) without disturbing the shared
//! server the other tests use. Made with the binaries of `/usr/lib/postgresql/<version>/bin`,
//! run as the `postgres` user when the test runs as root (initdb refuses root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

use super::process::free_port;

/// A running private cluster; stopped (immediately) and deleted when dropped.
pub struct PgCluster {
    bindir: PathBuf,
    dir: TempDir,
    port: u16,
    /// Run the binaries as `postgres` (the test runs as root).
    as_postgres: bool,
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }
}

/// Why no private cluster can be made here; a panic on CI, where the test must run.
fn unavailable(why: &str) -> Option<PgCluster> {
    assert!(
        !super::on_ci(),
        "CI is set but there is no private PostgreSQL cluster: {why}"
    );
    eprintln!("skipped: no private PostgreSQL cluster: {why}");
    None
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`.
fn find_bindir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

/// The output of `id <flag> postgres`, as a number.
fn postgres_id(flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgCluster {
    /// Creates and starts a cluster on a free port (trust authentication, user `postgres`), or
    /// says why it cannot and returns `None` (panics on CI).
    pub async fn start() -> Option<PgCluster> {
        tokio::task::spawn_blocking(Self::create).await.unwrap()
    }

    fn create() -> Option<PgCluster> {
        let Some(bindir) = find_bindir() else {
            return unavailable("no /usr/lib/postgresql/<version>/bin/initdb");
        };
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("unwind-pg-")
            .tempdir()
            .unwrap();
        if as_postgres {
            let (Some(uid), Some(gid)) = (postgres_id("-u"), postgres_id("-g")) else {
                return unavailable("running as root and there is no `postgres` user");
            };
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let cluster = PgCluster {
            bindir,
            dir,
            port: free_port(),
            as_postgres,
        };
        let data = cluster.data();
        // --no-sync: the cluster lives only as long as the test.
        let initdb = cluster.bindir.join("initdb");
        let init = cluster.run(&format!(
            "{} -D '{}' -A trust -U postgres --no-sync",
            initdb.display(),
            data.display()
        ));
        if !init {
            return unavailable("initdb failed");
        }
        assert!(cluster.start_again_blocking(), "{}", cluster.log());
        Some(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Runs a shell command line as the cluster's owner; true when it succeeded.
    fn run(&self, line: &str) -> bool {
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("su");
            c.args(["postgres", "-c", line]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", line]);
            c
        };
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        let pg_ctl = self.bindir.join("pg_ctl");
        self.run(&format!(
            "{} -D '{}' {}",
            pg_ctl.display(),
            self.data().display(),
            args.join(" ")
        ))
    }

    fn start_again_blocking(&self) -> bool {
        let dir: &Path = self.dir.path();
        // fsync off: only the server process stops, never the machine, so nothing written to
        // the page cache is lost; it spares the shared disk.
        let options = format!(
            "'-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off'",
            self.port,
            dir.display()
        );
        let log = dir.join("log");
        self.pg_ctl(&[
            "-o",
            &options,
            "-l",
            &format!("'{}'", log.display()),
            "-w",
            "start",
        ])
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl stop -m immediate`: the server quits at once, as if it crashed; clients see
    /// their connections cut and new ones refused.
    pub async fn stop_immediate(&self) {
        let ok = tokio::task::block_in_place(|| self.pg_ctl(&["-m", "immediate", "-w", "stop"]));
        assert!(ok, "pg_ctl stop failed:\n{}", self.log());
    }

    /// Starts the stopped server again on the same port and data (it recovers from its WAL).
    pub async fn start_again(&self) {
        let ok = tokio::task::block_in_place(|| self.start_again_blocking());
        assert!(ok, "pg_ctl start failed:\n{}", self.log());
    }
}
