//! Workspaces cloned from git (`repo_url`, `ref`): a bare repository made in the test with the
//! real git, cloned through file:// and a plain path; refused URLs, a missing repository or
//! ref, a clone past its deadline, and credentials that never show.
// Test helpers outside #[test] fns unwrap; the test process may spawn directly.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{wait_until, TestDaemon};
use serde_json::{json, Value};

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bare repository with `README.txt` on main and `feature.txt` on branch `feature`, readable
/// by the agent user.
fn bare_repo(dir: &Path) -> PathBuf {
    let bare = dir.join("origin.git");
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(dir, &["init", "-q", "--bare", "-b", "main", "origin.git"]);
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README.txt"), "hello from main\n").unwrap();
    git(&work, &["add", "README.txt"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(
        &work,
        &["push", "-q", bare.to_str().unwrap(), "main:refs/heads/main"],
    );
    git(&work, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(work.join("feature.txt"), "on feature\n").unwrap();
    git(&work, &["add", "feature.txt"]);
    git(&work, &["commit", "-q", "-m", "feature"]);
    git(
        &work,
        &[
            "push",
            "-q",
            bare.to_str().unwrap(),
            "feature:refs/heads/feature",
        ],
    );
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir)
        .status()
        .unwrap();
    bare
}

fn repo_dir() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("corral-repo")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn repo_url_clones_into_the_fresh_workspace_and_ref_checks_out() {
    let repo = repo_dir();
    let bare = bare_repo(repo.path());
    let d = TestDaemon::start();
    // file:// through the API; the instance sees the files as its own user
    let url = format!("file://{}", bare.display());
    let v = d.spawn(json!({
        "name": "cl-main",
        "argv": ["sh", "-c", "cat README.txt; cat .git/HEAD; exec sleep 60"],
        "repo_url": url,
        "wait_ready": true,
    }));
    assert_eq!(v["state"], "ready", "{v}");
    let out = d.wait_output("cl-main", "hello from main");
    assert!(out.contains("ref: refs/heads/main"), "{out}");
    let ws = PathBuf::from(v["workspace"].as_str().unwrap());
    let meta = std::fs::metadata(&ws).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o700, "a fresh workspace's mode");
    let readme = std::fs::metadata(ws.join("README.txt")).unwrap();
    assert_eq!(readme.uid(), meta.uid(), "the files are the agent's");
    if common::is_root() {
        let corral = nix::unistd::User::from_name("corral").unwrap().unwrap();
        assert_eq!(meta.uid(), corral.uid.as_raw(), "owned by the agent user");
        assert_eq!(meta.gid(), corral.gid.as_raw());
    }
    let spawn = d
        .events("cl-main")
        .into_iter()
        .find(|e| e["kind"] == "spawn")
        .unwrap();
    assert_eq!(spawn["data"]["repo"]["url"], url.as_str(), "{spawn}");
    assert_eq!(
        spawn["data"]["repo"]["commit"].as_str().map(str::len),
        Some(40),
        "{spawn}"
    );

    // a plain path and a branch, through the CLI
    let out = d.ok(&[
        "spawn",
        "--name",
        "cl-feat",
        "--repo-url",
        bare.to_str().unwrap(),
        "--ref",
        "feature",
        "--",
        "sh",
        "-c",
        "cat feature.txt; exec sleep 60",
    ]);
    assert!(out.contains("cl-feat"), "{out}");
    d.wait_output("cl-feat", "on feature");
    // the `ref` without a repo, and the two ways to pick a workspace, are refused by the CLI
    let e = d.fails(&["spawn", "--ref", "main", "--", "true"]);
    assert!(e.contains("--repo-url"), "{e}");
    let e = d.fails(&[
        "spawn",
        "--workspace",
        "x",
        "--repo-url",
        "/srv/r.git",
        "--",
        "true",
    ]);
    assert!(e.contains("cannot be used with"), "{e}");
}

#[test]
fn bad_urls_missing_repos_and_refs_fail_cleanly_without_leftovers() {
    let repo = repo_dir();
    let bare = bare_repo(repo.path());
    let d = TestDaemon::start();
    let root = d.state_dir().join("workspaces");
    let homes = d.state_dir().join("homes");
    let agents = d.state_dir().join("agents");
    let before = (entries(&root), entries(&homes), entries(&agents));
    let spawn_err = |body: Value, status: u16| -> String {
        let (s, v) = d.post("/api/v1/instances", &body);
        assert_eq!(s, status, "{body}: {v}");
        v["error"].as_str().unwrap().to_string()
    };
    let argv = json!(["sh", "-c", "sleep 60"]);
    for (url, want) in [
        ("ext::sh -c touch% /tmp/pwned", "ext:: transport is refused"),
        ("fd::3", "fd:: transport is refused"),
        ("--upload-pack=touch /tmp/pwned", "starts with '-'"),
        ("ssh://-oProxyCommand=touch%20x/r", "starting with '-'"),
        ("ftp://example.com/r.git", "scheme ftp://"),
        ("relative/repo", "not a git URL"),
    ] {
        let e = spawn_err(json!({"argv": argv, "repo_url": url}), 400);
        assert!(e.contains(want), "{url}: {e}");
    }
    let e = spawn_err(
        json!({"argv": argv, "repo_url": bare.to_str().unwrap(), "workspace": "w"}),
        400,
    );
    assert!(e.contains("exclude each other"), "{e}");
    let e = spawn_err(json!({"argv": argv, "ref": "main"}), 400);
    assert!(e.contains("ref applies to repo_url"), "{e}");
    let e = spawn_err(
        json!({"argv": argv, "repo_url": bare.to_str().unwrap(), "ref": "-b"}),
        400,
    );
    assert!(e.contains("starts with '-'"), "{e}");

    // git itself fails: no such repository, no such ref, a server that refuses — with git's
    // message, credentials redacted, and nothing left behind
    let missing = repo.path().join("missing.git");
    let e = spawn_err(
        json!({"argv": argv, "repo_url": format!("file://{}", missing.display())}),
        422,
    );
    assert!(e.contains("git failed") && e.contains("missing.git"), "{e}");
    let e = spawn_err(
        json!({"argv": argv, "repo_url": bare.to_str().unwrap(), "ref": "no-such-branch"}),
        422,
    );
    assert!(
        e.contains("checking out ref \"no-such-branch\"") && e.contains("invalid reference"),
        "{e}"
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port() // closed again: connections are refused
    };
    let secret_url = format!("https://bob:s3cr3t-t0ken@127.0.0.1:{port}/r.git");
    let e = spawn_err(json!({"argv": argv, "repo_url": secret_url}), 422);
    assert!(e.contains("https://***@127.0.0.1"), "{e}");
    let mcp_like = spawn_err(
        json!({"argv": argv, "repo_url": format!("https://s3cr3t-t0ken@127.0.0.1:{port}/r.git")}),
        422,
    );
    assert!(!mcp_like.contains("s3cr3t"), "{mcp_like}");
    assert_eq!(
        (entries(&root), entries(&homes), entries(&agents)),
        before,
        "a failed clone leaves no workspace, HOME or agent dir"
    );
    assert!(!Path::new("/tmp/pwned").exists());
    // the secret is nowhere: not in the error (above), the events, the audit or daemon log
    let (_, evs) = d.get("/api/v1/events");
    assert!(!evs.to_string().contains("s3cr3t"), "{evs}");
    for f in walk(d.dir.path()) {
        if f.extension().is_some_and(|e| e == "jsonl" || e == "log") {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            assert!(!text.contains("s3cr3t"), "{} holds the secret", f.display());
        }
    }
    let log = std::fs::read_to_string(d.dir.path().join("daemon.log")).unwrap();
    assert!(log.contains("clone failed"), "the failure is logged");
}

#[test]
fn a_clone_past_its_deadline_is_killed() {
    // a server that accepts the connection and never answers
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let d = TestDaemon::start_with("[instance]\nclone_timeout_s = 1\n");
    let url = format!("http://127.0.0.1:{port}/stalled-{}.git", std::process::id());
    let started = std::time::Instant::now();
    let (s, v) = d.post(
        "/api/v1/instances",
        &json!({"argv": ["sh", "-c", "sleep 60"], "repo_url": url}),
    );
    assert_eq!(s, 422, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("instance.clone_timeout_s = 1"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // git and its helper (git-remote-http) are gone
    wait_until("no git process left", Duration::from_secs(5), || {
        let left = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .any(|c| {
                String::from_utf8_lossy(&c).contains(&format!("stalled-{}", std::process::id()))
            });
        (!left).then_some(())
    });
    drop(l);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn spawn_agent_clones_over_mcp_and_the_agent_reads_the_files() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;

    let repo = repo_dir();
    let bare = bare_repo(repo.path());
    let d = TestDaemon::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", d.url));
        let c = ().serve(StreamableHttpClientTransport::from_config(cfg)).await.unwrap();
        let call = |tool: &str, args: Value| {
            let p = CallToolRequestParams::new(tool.to_string())
                .with_arguments(args.as_object().cloned().unwrap());
            let c = &c;
            async move { c.call_tool(p).await.unwrap() }
        };
        let r = call(
            "spawn_agent",
            json!({"name": "m", "argv": ["sh", "-c", "exec sleep 60"], "repo_url": format!("file://{}", bare.display()), "ref": "feature", "wait_ready": true}),
        )
        .await;
        assert_ne!(r.is_error, Some(true), "{r:?}");
        let r = call("list_files", json!({"instance": "m"})).await;
        let files = r.structured_content.unwrap();
        let names: Vec<&str> = files["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert!(
            names.contains(&"README.txt") && names.contains(&"feature.txt"),
            "{files}"
        );
        let r = call("read_file", json!({"instance": "m", "path": "feature.txt"})).await;
        assert_eq!(r.structured_content.unwrap()["text"], "on feature\n");
        let r = call(
            "spawn_agent",
            json!({"argv": ["true"], "repo_url": format!("{}/nope.git", repo.path().display())}),
        )
        .await;
        assert_eq!(r.is_error, Some(true), "{r:?}");
        let text: String = r
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect();
        assert!(text.contains("spawn failed: cloning") && text.contains("nope.git"), "{text}");
        c.cancel().await.unwrap();
    });
}

#[test]
fn an_agent_starts_in_a_cloned_repository_without_the_trust_screen() {
    // A git repository as the cwd is what makes Codex ask "Trust this folder?": the seeded
    // trust must cover the cloned workspace.
    let repo = repo_dir();
    let bare = bare_repo(repo.path());
    let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/bin");
    let d = TestDaemon::start_with(&format!(
        "[agents.codex]\nbinary = \"{fx}/codex\"\napi_key = \"sk-openai-test-0123456789\"\n\
         [agents]\nenter_delay_ms = 50\nstart_timeout_s = 20.0\n"
    ));
    let v = d.spawn(json!({"name": "cx", "kind": "codex", "repo_url": bare.to_str().unwrap(), "wait_ready": true}));
    assert_eq!(v["state"], "ready", "{v}");
    let (s, out) = d.post(
        "/api/v1/instances/cx/send",
        &json!({"text": "say hi", "wait": true, "timeout_s": 20}),
    );
    assert_eq!(s, 200, "{out}");
    assert_eq!(
        out["outcome"]["reply"], "Hello from the fake Codex. (say hi)",
        "{out}"
    );
}
