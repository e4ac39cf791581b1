//! What a user sees when the command line or the configuration is wrong: one line on stderr
//! that names the flag (or variable, or file key) to fix, and exit status 2.

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sockgate"))
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("sockgate runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn a_bad_upstream_flag_is_named_as_a_flag() {
    let (code, stderr) = run(&["--upstream", "localhost:4321", "--print-config"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("from command-line flag `--upstream`"),
        "{stderr}"
    );
    assert!(!stderr.contains("src/"), "no source locations: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn an_upstream_without_a_port_is_refused_saying_so() {
    let (code, stderr) = run(&["--upstream", "http://localhost", "--print-config"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("has no port"), "{stderr}");

    let (code, stderr) = run(
        &["--print-config"],
        &[("SIDECAR_UPSTREAM__URL", "http://localhost")],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("environment variable `SIDECAR_UPSTREAM__URL`"),
        "{stderr}"
    );

    let (code, stdout_ok) = run(
        &["--upstream", "http://localhost:4321", "--print-config"],
        &[],
    );
    assert_eq!(code, 0, "{stdout_ok}");
}

#[test]
fn a_bad_port_flag_value_names_the_flag() {
    let (code, stderr) = run(&["--port", "http"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--port"), "{stderr}");
}

#[test]
fn a_bad_redis_url_names_the_key_and_hides_the_password() {
    for url in [
        "http://:hunter2@db:6379",
        "redis-sentinel://:hunter2@s1:26379",
        "redis://:hunter2@db:notaport",
    ] {
        let (code, stderr) = run(
            &["--upstream", "http://localhost:4321", "--print-config"],
            &[("SIDECAR_CLUSTER__REDIS_URL", url)],
        );
        assert_eq!(code, 2, "{url}: {stderr}");
        assert!(stderr.contains("cluster.redis_url"), "{url}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{url}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{url}: {stderr}");
    }
    for url in [
        "redis://app:pw@db:6379/0",
        "rediss://:pw@db:6380",
        "redis-cluster://db1:7000?node=db2:7000",
        "rediss-cluster://db1:7000",
        "redis-sentinel://s1:26379?node=s2:26379&sentinelServiceName=mymaster",
    ] {
        let (code, stderr) = run(
            &["--upstream", "http://localhost:4321", "--print-config"],
            &[("SIDECAR_CLUSTER__REDIS_URL", url)],
        );
        assert_eq!(code, 0, "{url}: {stderr}");
    }
}

#[test]
fn a_ca_file_needs_a_tls_url_and_a_readable_file() {
    let (code, stderr) = run(
        &["--upstream", "http://localhost:4321", "--print-config"],
        &[
            ("SIDECAR_CLUSTER__REDIS_URL", "redis://db:6379"),
            ("SIDECAR_CLUSTER__TLS_CA_FILE", "/nonexistent/ca.pem"),
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cluster.tls_ca_file"), "{stderr}");
    let (code, stderr) = run(
        &["--upstream", "http://localhost:4321", "--print-config"],
        &[
            ("SIDECAR_CLUSTER__REDIS_URL", "rediss://db:6379"),
            ("SIDECAR_CLUSTER__TLS_CA_FILE", "/nonexistent/ca.pem"),
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("cluster.tls_ca_file") && stderr.contains("/nonexistent/ca.pem"),
        "{stderr}"
    );
}

#[test]
fn a_bad_list_entry_names_the_variable_as_written() {
    let (code, stderr) = run(
        &["--print-config"],
        &[("SIDECAR_REALTIME__TRANSPORTS", "[\"carrier-pigeon\"]")],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "key `realtime.transports` from environment variable \
             `SIDECAR_REALTIME__TRANSPORTS`: unknown variant: found `carrier-pigeon`, \
             expected `polling` or `websocket`"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
