//! docker-compose.yml and the Dockerfile, checked without Docker: the compose file parses and
//! has the expected services, ports and start order; every command line in it and in the
//! image's ENTRYPOINT/CMD parses with the binaries' own clap definitions (and the real `unwind`
//! binary accepts it); the coordinator's mounted configuration loads with the environment the
//! compose file gives it, and it trusts exactly the agents the file starts, at their addresses.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::Parser;
use unwind::config::{Config, Overrides};
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Yaml {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let mut docs = YamlLoader::load_from_str(&text).expect("docker-compose.yml is YAML");
    assert_eq!(docs.len(), 1, "one YAML document");
    docs.remove(0)
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .unwrap_or_else(|| panic!("not a list: {y:?}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("not a string: {v:?}"))
                .to_string()
        })
        .collect()
}

/// `depends_on` as (service -> condition), in either of its two compose forms.
fn depends_on(service: &Yaml) -> BTreeMap<String, String> {
    match &service["depends_on"] {
        Yaml::Array(list) => list
            .iter()
            .map(|s| (s.as_str().unwrap().to_string(), "service_started".into()))
            .collect(),
        Yaml::Hash(map) => map
            .iter()
            .map(|(k, v)| {
                let condition = v["condition"].as_str().unwrap_or("service_started");
                (k.as_str().unwrap().to_string(), condition.to_string())
            })
            .collect(),
        Yaml::BadValue => BTreeMap::new(),
        other => panic!("depends_on: {other:?}"),
    }
}

/// The value after `--flag` in an argument list.
fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| a == name)
        .unwrap_or_else(|| panic!("no {name} in {args:?}"));
    &args[at + 1]
}

/// A Dockerfile instruction of the final stage in exec (JSON) form.
fn dockerfile_exec(instruction: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("no {instruction} in the Dockerfile"));
    serde_json::from_str(&line[instruction.len()..])
        .unwrap_or_else(|e| panic!("{instruction} is not in exec form: {e}"))
}

/// The `unwind` binary accepts `args` (flags and their values are checked before `--help`
/// ends parsing; an unknown flag or a bad value is an error even then).
fn unwind_accepts(args: &[String], context: &str) {
    if let Err(e) = unwind::cli::Cli::try_parse_from(
        std::iter::once("unwind".into()).chain(args.iter().cloned()),
    ) {
        panic!("{context}: unwind {args:?}: {e}");
    }
    let out = common::process::unwind()
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    common::process::assert_success(&out, &format!("{context}: unwind {args:?} --help"));
}

fn agent_accepts(args: &[String], context: &str) -> unwind_agent::cli::ServeArgs {
    let all = std::iter::once("unwind-agent".to_string()).chain(args.iter().cloned());
    match unwind_agent::cli::Cli::try_parse_from(all) {
        Ok(unwind_agent::cli::Cli {
            command: unwind_agent::cli::Command::Serve(serve),
        }) => serve,
        Ok(other) => panic!("{context}: not `serve`: {other:?}"),
        Err(e) => panic!("{context}: unwind-agent {args:?}: {e}"),
    }
}

const AGENTS: [&str; 2] = ["router-agent", "dns-agent"];

#[test]
fn compose_file_has_postgres_unwind_and_two_agents_in_order() {
    let doc = compose();
    let services = doc["services"].as_hash().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(Yaml::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["postgres", "unwind", "router-agent", "dns-agent"])
    );
    let s = &doc["services"];
    assert!(
        s["postgres"]["image"]
            .as_str()
            .unwrap()
            .starts_with("postgres:")
    );
    assert!(!s["postgres"]["healthcheck"]["test"].is_badvalue());
    assert_eq!(
        depends_on(&s["unwind"]),
        BTreeMap::from([("postgres".into(), "service_healthy".into())])
    );
    assert_eq!(s["unwind"]["build"].as_str(), Some("."));
    assert_eq!(strings(&s["unwind"]["ports"]), ["127.0.0.1:8080:8080"]);
    for (agent, port) in AGENTS.iter().zip(["9001", "9002"]) {
        let a = &s[*agent];
        assert_eq!(
            a["build"].as_str(),
            Some("."),
            "{agent} uses the same image"
        );
        assert_eq!(a["image"], s["unwind"]["image"], "{agent}");
        assert_eq!(strings(&a["entrypoint"]), ["/usr/local/bin/unwind-agent"]);
        assert!(
            depends_on(a).contains_key("unwind"),
            "{agent} starts after unwind"
        );
        assert_eq!(strings(&a["ports"]), [format!("127.0.0.1:{port}:9000")]);
    }
    // Every named volume a service mounts is declared.
    let declared: BTreeSet<&str> = doc["volumes"]
        .as_hash()
        .unwrap()
        .keys()
        .filter_map(Yaml::as_str)
        .collect();
    for (name, service) in services {
        for v in strings(&service["volumes"]) {
            let source = v.split(':').next().unwrap();
            if !source.starts_with('.') && !source.starts_with('/') {
                assert!(declared.contains(source), "{name:?}: volume {source}");
            }
        }
    }
}

#[test]
fn every_command_line_is_accepted_by_the_binaries() {
    let doc = compose();
    let s = &doc["services"];
    // The image: `unwind` is the entrypoint, and its default CMD parses.
    assert_eq!(dockerfile_exec("ENTRYPOINT"), ["/usr/local/bin/unwind"]);
    unwind_accepts(&dockerfile_exec("CMD"), "Dockerfile CMD");
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let build = dockerfile
        .lines()
        .find(|l| l.starts_with("RUN cargo build"))
        .expect("the build stage runs cargo build");
    // Each binary's own package must be selected: from the workspace root cargo builds the
    // root package only, and `--bin unwind-agent` alone is an error.
    for (bin, package) in [("unwind", "unwind"), ("unwind-agent", "unwind-agent")] {
        assert!(
            build.contains(&format!("--bin {bin}")) && build.contains(&format!("-p {package} ")),
            "the image builds {bin} of package {package}: {build}"
        );
        assert!(
            dockerfile.contains(&format!("/src/target/release/{bin} /usr/local/bin/{bin}")),
            "the image installs {bin}"
        );
    }
    unwind_accepts(&strings(&s["unwind"]["command"]), "compose unwind");
    for agent in AGENTS {
        let args = strings(&s[agent]["command"]);
        let serve = agent_accepts(&args, agent);
        assert_eq!(serve.listen.port(), 9000, "{agent}");
        assert!(serve.coordinator_jwks.is_none(), "{agent}");
    }
}

#[test]
fn coordinator_and_agents_trust_each_other() {
    let doc = compose();
    let s = &doc["services"];
    let unwind_args = strings(&s["unwind"]["command"]);
    // The mounted configuration file, loaded like `unwind serve` loads it, with the compose
    // environment (an unknown key would be refused).
    let mount = strings(&s["unwind"]["volumes"])
        .into_iter()
        .find(|v| v.ends_with(":ro") && v.contains(flag(&unwind_args, "--config")))
        .expect("the --config file is mounted read-only");
    let host_path = root().join(mount.split(':').next().unwrap());
    let env: Vec<(String, String)> = s["unwind"]["environment"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
        .collect();
    let overrides = Overrides {
        listen: Some(flag(&unwind_args, "--listen").into()),
        data_dir: Some(flag(&unwind_args, "--data-dir").into()),
        ..Overrides::default()
    };
    let config = Config::load_from(Some(Path::new(&host_path)), &env, &overrides)
        .unwrap_or_else(|e| panic!("{}: {e}", host_path.display()));
    assert!(config.database_url().starts_with("postgres://"));
    assert!(config.database_url().contains("@postgres:5432/"));
    let coordinator_port = config.listen.port();

    assert_eq!(config.trust.issuers.len(), AGENTS.len());
    for agent in AGENTS {
        let serve = agent_accepts(&strings(&s[agent]["command"]), agent);
        // The agent obeys this coordinator, with the keys it serves inside the network.
        assert_eq!(serve.coordinator_id, config.coordinator_id, "{agent}");
        assert_eq!(
            serve.coordinator_jwks_url.as_deref(),
            Some(format!("http://unwind:{coordinator_port}/.well-known/jwks.json").as_str()),
            "{agent}"
        );
        // The coordinator trusts the agent's id, fetches its keys from the agent's service
        // and lets its rollback endpoint name that service only.
        let issuer = config
            .trust
            .issuers
            .iter()
            .find(|i| i.id == serve.common.id)
            .unwrap_or_else(|| panic!("{agent}: {} is not trusted", serve.common.id));
        assert_eq!(
            issuer.jwks_url.as_deref(),
            Some(
                format!(
                    "http://{agent}:{}{}",
                    serve.listen.port(),
                    unwind_agent::reference::JWKS_PATH
                )
                .as_str()
            )
        );
        assert_eq!(issuer.rollback_hosts, [agent.to_string()]);
        assert!(
            issuer.allow_http,
            "{agent}: plain http inside the compose network"
        );
        // The agent's key and data sit on its own volume.
        let volume = strings(&s[agent]["volumes"]).join(" ");
        assert!(
            volume.contains(&format!(":{}", serve.common.data_dir.display())),
            "{agent}"
        );
        assert!(
            serve.common.key.starts_with(&serve.common.data_dir),
            "{agent}"
        );
        // ... which the image creates, owned by its user, so the volume starts writable.
        let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
        assert!(
            dockerfile.contains(&format!(
                "chown unwind /var/lib/unwind {}",
                serve.common.data_dir.display()
            )),
            "{agent}: the image prepares {}",
            serve.common.data_dir.display()
        );
    }
}
