//! The real `unwind serve` binary as a child process, for tests that run the service the way a
//! user does: on a free port, with a configuration file that trusts one agent key, killed when
//! the test is done (or panics).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use unwind::ect::{KeyAlg, SigningKey};
use unwind_agent::RollbackHandler;
use unwind_agent::reference::{self, Behaviour, Controls, ReferenceHandler};

use super::agents::{
    AgentTrust, Figure, TestAgent, poll_rollback, serve_agent, served_jwks, sign_figure,
};
use super::server::{AGENT_PREFIX, OPERATOR_TOKEN, assert_created};
use super::{DbKind, PgDatabaseGuard};

/// The coordinator id every process-based test configures (the default one).
pub const COORDINATOR_ID: &str = "spiffe://unwind.local/coordinator";

/// The `unwind` binary, with none of the test's own `UNWIND_*` variables passed on.
pub fn unwind() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_unwind"));
    for (k, _) in std::env::vars() {
        if k.starts_with("UNWIND_") {
            c.env_remove(k);
        }
    }
    c
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Asserts that a finished command succeeded, showing its stderr when it did not.
pub fn assert_success(out: &std::process::Output, context: &str) {
    assert!(
        out.status.success(),
        "{context}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a finished `unwind` command printed, and its exit code.
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Asserts exit code 0, showing both streams when it is not.
    pub fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "{}\n{}", self.stdout, self.stderr);
        self
    }
}

/// Runs a prepared `unwind` command to its end.
pub async fn run_cli(cmd: Command) -> CliOutput {
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running `unwind serve`; killed when dropped.
pub struct ServeProcess {
    child: Child,
    port: u16,
    base: String,
    /// Everything it printed on stdout up to its "listening on" line.
    pub printed: String,
    /// Its data directory (admin token, signing key, embedded database).
    pub data_dir: PathBuf,
    log: Option<PathBuf>,
    client: reqwest::Client,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServeProcess {
    /// Starts `unwind serve` in `dir` with no configuration file (data in `dir/unwind-data`).
    pub fn start(dir: &Path) -> ServeProcess {
        Self::launch(dir, None, dir.join("unwind-data"), None)
    }

    /// Like [`Self::start`], with `--config <config>`.
    pub fn start_with_config(dir: &Path, config: &Path) -> ServeProcess {
        Self::launch(dir, Some(config), dir.join("unwind-data"), None)
    }

    /// Starts `unwind serve [--config <config>] --listen 127.0.0.1:<free port>` in `dir` and
    /// waits for its "listening on" line. Its stderr goes to `log` (appended, so a restart keeps
    /// the earlier lines) at debug level, or is kept in memory for the failure message. A port
    /// taken by someone else between `free_port` and the bind is retried with another one.
    fn launch(
        dir: &Path,
        config: Option<&Path>,
        data_dir: PathBuf,
        log: Option<&Path>,
    ) -> ServeProcess {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_launch(dir, config, &data_dir, log) {
                Ok(process) => return process,
                Err(early) if early.contains("cannot listen on") && attempt < 5 => continue,
                Err(early) => panic!("unwind serve exited early:\n{early}"),
            }
        }
    }

    /// One start; `Err` holds what the process printed (stdout and stderr) when it exited
    /// before listening.
    fn try_launch(
        dir: &Path,
        config: Option<&Path>,
        data_dir: &Path,
        log: Option<&Path>,
    ) -> Result<ServeProcess, String> {
        let port = free_port();
        let mut cmd = unwind();
        cmd.arg("serve")
            .current_dir(dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::piped());
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        let log_start = log
            .and_then(|l| std::fs::metadata(l).ok())
            .map_or(0, |m| m.len());
        match log {
            Some(log) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap();
                cmd.env("RUST_LOG", "unwind=debug,info")
                    .stderr(Stdio::from(file));
            }
            None => {
                cmd.stderr(Stdio::piped());
            }
        }
        let mut child = cmd.spawn().unwrap();
        // Drained on a thread so the child never blocks on a full pipe.
        let stderr = child.stderr.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        });
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut printed = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).unwrap();
            if n == 0 {
                let _ = child.wait();
                let err = match (stderr, log) {
                    (Some(thread), _) => thread.join().unwrap_or_default(),
                    (None, Some(log)) => std::fs::read(log)
                        .map(|b| String::from_utf8_lossy(&b[log_start as usize..]).into_owned())
                        .unwrap_or_default(),
                    (None, None) => String::new(),
                };
                return Err(format!("{printed}{err}"));
            }
            printed.push_str(&line);
            if line.contains("listening on") {
                break;
            }
            assert!(Instant::now() < deadline, "no listening line:\n{printed}");
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = reader.read_to_string(&mut sink);
        });
        Ok(ServeProcess {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            printed,
            data_dir: data_dir.to_path_buf(),
            log: log.map(Path::to_path_buf),
            client: reqwest::Client::new(),
        })
    }

    /// `unwind serve` on a free port with its data in `data_dir` and no configuration file, run
    /// as `sh -c "<prelude> && exec unwind serve ..."` (e.g. a `umask` or `ulimit` for it) in
    /// `dir` with `env` set; `Err` holds what it printed when it exited before listening.
    pub fn start_in_shell(
        dir: &Path,
        data_dir: &Path,
        prelude: &str,
        env: &[(&str, &str)],
    ) -> Result<ServeProcess, String> {
        let port = free_port();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{prelude} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_unwind"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("UNWIND_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("UNWIND_DATA_DIR", data_dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut printed = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                let _ = child.wait();
                return Err(format!("{printed}{}", stderr.join().unwrap_or_default()));
            }
            printed.push_str(&line);
            if line.contains("listening on") {
                break;
            }
            assert!(Instant::now() < deadline, "no listening line:\n{printed}");
        }
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = reader.read_to_string(&mut sink);
        });
        Ok(ServeProcess {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            printed,
            data_dir: data_dir.to_path_buf(),
            log: None,
            client: reqwest::Client::new(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The service's base URL, `http://127.0.0.1:<port>`.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The admin token the service wrote into its data directory.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Its log so far (empty when it was started without one).
    pub fn logs(&self) -> String {
        self.log
            .as_ref()
            .and_then(|log| std::fs::read_to_string(log).ok())
            .unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM: the graceful shutdown.
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// SIGKILL: no shutdown, no lease released, an agent call left in flight.
    pub fn sigkill(&mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit; kills it and panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("unwind did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the client command `unwind <args> --url <this service>` in `dir`, with the admin
    /// token of its data directory.
    pub async fn cli(&self, dir: &Path, args: &[&str]) -> CliOutput {
        let mut c = unwind();
        c.args(args)
            .args(["--url", self.base()])
            .env("UNWIND_DATA_DIR", &self.data_dir)
            .current_dir(dir);
        run_cli(c).await
    }

    /// GET with the operator token of a [`ServeSetup`] configuration; must answer 200.
    pub async fn get(&self, path: &str) -> Value {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    /// POST JSON with the operator token; returns status and JSON body (`null` when none).
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Signs the seed figure with `a` and `b` and ingests it; every token must be created.
    pub async fn seed_figure<C>(&self, a: &TestAgent<C>, b: &TestAgent<C>, wid: &str) -> Figure {
        let figure = sign_figure(a, b, wid).await;
        let response = self
            .client
            .post(self.url("/v1/ects"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&serde_json::json!({ "tokens": figure.tokens }))
            .send()
            .await
            .unwrap();
        assert_created(response, "seed figure").await;
        figure
    }

    /// Polls the rollback until it reaches one of `states`; panics with the log after `limit`.
    pub async fn wait_for(&self, id: &str, states: &[&str], limit: Duration) -> Value {
        let path = format!("/v1/rollbacks/{id}");
        poll_rollback(
            || self.get(&path),
            states,
            (limit, Duration::from_millis(100)),
            |body| {
                format!(
                    "stuck in {}: {body}\ncoordinator log:\n{}",
                    body["status"],
                    self.logs()
                )
            },
        )
        .await
    }
}

/// How a [`ServeSetup`] configures its coordinators.
#[derive(Default)]
pub struct ServeOptions {
    /// The database; `None` is the embedded default in each replica's data directory.
    pub database: Option<DbKind>,
    /// One signing key made before any coordinator runs and shared by every replica (otherwise
    /// each makes its own at first start).
    pub shared_key: bool,
    /// More TOML for the configuration, e.g. a `[rollback]` table.
    pub extra: &'static str,
}

/// Everything one test's coordinators share: a directory for configurations, data and logs, the
/// database, the agents' key (trusted for `spiffe://example.com/agent/*` with rollback endpoints
/// on 127.0.0.1 over HTTP) and the operator token. A PostgreSQL database is dropped with it.
pub struct ServeSetup {
    pub dir: TempDir,
    pub agent_key: SigningKey,
    pub database_url: Option<String>,
    options: ServeOptions,
    key_file: Option<PathBuf>,
    _db_dir: Option<TempDir>,
    _pg: Option<PgDatabaseGuard>,
}

impl ServeSetup {
    pub async fn new(options: ServeOptions) -> ServeSetup {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let (database_url, db_dir) = match options.database {
            Some(kind) => {
                let (url, dir) = super::fresh_database_url(kind).await;
                (Some(url), dir)
            }
            None => (None, None),
        };
        let pg = match options.database {
            Some(DbKind::Postgres) => database_url.clone().map(|url| PgDatabaseGuard { url }),
            _ => None,
        };
        let dir = tempfile::tempdir().unwrap();
        let key_file = options.shared_key.then(|| {
            let key_file = dir.path().join("coordinator.jwk");
            let out = unwind()
                .args(["keys", "generate", "--alg", "es256", "--out"])
                .arg(&key_file)
                .output()
                .unwrap();
            assert_success(&out, "keys generate");
            key_file
        });
        let agent_key = SigningKey::generate(KeyAlg::ES256).unwrap();
        std::fs::write(
            dir.path().join("agents.jwks.json"),
            serde_json::to_string(&agent_key.public_jwks()).unwrap(),
        )
        .unwrap();
        ServeSetup {
            dir,
            agent_key,
            database_url,
            options,
            key_file,
            _db_dir: db_dir,
            _pg: pg,
        }
    }

    /// Like [`ServeSetup::new`], on a database the test runs itself (e.g. a private
    /// PostgreSQL cluster); `options.database` stays unset.
    pub async fn on_url(url: &str, options: ServeOptions) -> ServeSetup {
        let mut setup = Self::new(options).await;
        setup.database_url = Some(url.to_string());
        setup
    }

    /// The data directory of replica `name`.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("data-{name}"))
    }

    /// Writes the configuration of replica `name` (its own data directory, with a copy of the
    /// shared key when there is one) and returns its path.
    fn config(&self, name: &str) -> PathBuf {
        let d = self.dir.path();
        let data = self.data_dir(name);
        std::fs::create_dir_all(&data).unwrap();
        let mut toml = format!(
            "coordinator_id = \"{COORDINATOR_ID}\"\ndata_dir = {:?}\n",
            data.display().to_string()
        );
        if let Some(url) = &self.database_url {
            toml.push_str(&format!("database_url = {url:?}\n"));
        }
        if let Some(shared) = &self.key_file {
            let key = data.join("coordinator.jwk");
            if !key.exists() {
                std::fs::copy(shared, &key).unwrap();
            }
            toml.push_str(&format!(
                "signing_key_file = {:?}\n",
                key.display().to_string()
            ));
        }
        toml.push_str(&format!(
            r#"{extra}
[[trust.issuers]]
id = "{AGENT_PREFIX}*"
jwks_file = {jwks:?}
rollback_hosts = ["127.0.0.1"]
allow_http = true

[[auth.tokens]]
name = "ops"
role = "operator"
sha256 = "{sha}"
"#,
            extra = self.options.extra,
            jwks = d.join("agents.jwks.json").display().to_string(),
            sha = unwind::ect::sha256_hex(OPERATOR_TOKEN.as_bytes()),
        ));
        let path = d.join(format!("unwind-{name}.toml"));
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// Starts replica `name`, or starts it again on the same configuration and data directory
    /// after it died; its log is `unwind-<name>.log`, kept across restarts.
    pub async fn start(&self, name: &str) -> ServeProcess {
        let config = self.config(name);
        let dir = self.dir.path().to_path_buf();
        let data = self.data_dir(name);
        let log = dir.join(format!("unwind-{name}.log"));
        tokio::task::spawn_blocking(move || {
            ServeProcess::launch(&dir, Some(&config), data, Some(&log))
        })
        .await
        .unwrap()
    }

    /// An agent `agent/<name>` answering with `handler`, trusting the keys `coordinator` serves.
    pub async fn start_agent<C>(
        &self,
        coordinator: &ServeProcess,
        name: &str,
        handler: Arc<dyn RollbackHandler>,
        controls: C,
    ) -> TestAgent<C> {
        let trust = AgentTrust {
            key: &self.agent_key,
            coordinator_id: COORDINATOR_ID,
            coordinator_jwks: served_jwks(&coordinator.client, &coordinator.base).await,
        };
        serve_agent(name, trust, handler, controls, |agent, _| agent.router()).await
    }

    /// The reference agent `agent/<name>` with programmable `behaviour` (`slow:200`, `fail:3`,
    /// ...; see `unwind_agent::reference`), counting its calls and restores, trusting the keys
    /// `coordinator` serves.
    pub async fn start_reference_agent(
        &self,
        coordinator: &ServeProcess,
        name: &str,
        behaviour: &str,
    ) -> TestAgent {
        let controls = Controls::new(behaviour.parse::<Behaviour>().unwrap());
        let handler = Arc::new(ReferenceHandler::new(controls.clone()));
        let trust = AgentTrust {
            key: &self.agent_key,
            coordinator_id: COORDINATOR_ID,
            coordinator_jwks: served_jwks(&coordinator.client, &coordinator.base).await,
        };
        serve_agent(name, trust, handler, controls, |agent, controls| {
            reference::router(agent, controls.clone(), false)
        })
        .await
    }
}
