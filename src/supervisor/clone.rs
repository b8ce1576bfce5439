//! Workspaces cloned from a git repository (`repo_url`, optional `ref`).
//!
//! The URL is checked before anything is created: `https://`, `http://`, `ssh://`,
//! `[user@]host:path` (scp-style), `file:///abs/path` and absolute paths are accepted;
//! remote-helper syntax (`ext::`, `fd::`, any `transport::address`), other schemes, a leading
//! `-` (an option to git) and a host or user starting with `-` (an option to ssh) are refused.
//!
//! `git clone` runs as the instance's own user (so a local path clones only what the agent
//! could read anyway), in its own process group, with a clean environment
//! (`GIT_TERMINAL_PROMPT=0`, no credentials of the daemon), a private global git config
//! (`safe.directory`, `protocol.ext.allow = never`) and a deadline (`instance.clone_timeout_s`);
//! at the deadline the whole group is killed. Credentials in a URL
//! (`https://user:token@host/...`) never leave this module unredacted: events, errors and logs
//! get [`redact`]ed text.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

/// Variables passed from the daemon to git: finding programs, the locale, and the network
/// setup (proxies, CA certificates). Nothing else: no API keys, no tokens.
const GIT_ENV_ALLOWLIST: &[&str] = &[
    "PATH",
    "TZ",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
    "GIT_SSH_COMMAND",
];

/// The global git config the clone runs with (written to the instance's private tmp).
/// `safe.directory`: git refuses to read a local repository another user owns; the clone
/// runs as the agent's user, which may read it but does not own it. git honours this key
/// only in protected (system or global) config, not from `-c` (local transports drop it).
const GIT_CONFIG: &str = "[safe]\n\tdirectory = *\n[protocol \"ext\"]\n\tallow = never\n\
[protocol \"fd\"]\n\tallow = never\n[advice]\n\tdetachedHead = false\n";

const STDERR_TAIL: usize = 1500;

/// Checks a `repo_url`; the error names the problem (with the URL redacted).
pub fn validate_url(url: &str) -> Result<(), String> {
    let shown = redact(url);
    let accepted = "accepted: https://, http://, ssh://, user@host:path, file:///absolute/path or an absolute path";
    if url.is_empty() {
        return Err("repo_url is empty".to_string());
    }
    if url.len() > 4096 {
        return Err("repo_url is longer than 4096 bytes".to_string());
    }
    if url.starts_with('-') {
        return Err(format!(
            "repo_url {shown:?} starts with '-': git would take it for an option"
        ));
    }
    let lower = url.to_ascii_lowercase();
    for t in ["ext::", "fd::"] {
        if lower.starts_with(t) {
            return Err(format!(
                "repo_url {shown:?}: the {t} transport is refused (it runs commands or reads file descriptors of the server); {accepted}"
            ));
        }
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "repo_url {shown:?} contains whitespace or control characters"
        ));
    }
    let before_slash = url.split('/').next().unwrap_or("");
    if before_slash.contains("::") {
        return Err(format!(
            "repo_url {shown:?}: the transport::address (remote helper) syntax is refused; {accepted}"
        ));
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        match scheme.as_str() {
            "https" | "http" | "ssh" => {
                let authority = rest.split('/').next().unwrap_or("");
                let (user, host) = match authority.rsplit_once('@') {
                    Some((u, h)) => (Some(u), h),
                    None => (None, authority),
                };
                if host.is_empty() {
                    return Err(format!("repo_url {shown:?} names no host"));
                }
                if host.starts_with('-') || user.is_some_and(|u| u.starts_with('-')) {
                    return Err(format!(
                        "repo_url {shown:?}: a host or user starting with '-' is refused (ssh would take it for an option)"
                    ));
                }
                let host_ok = host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_:[]".contains(c));
                if !host_ok {
                    return Err(format!("repo_url {shown:?}: {host:?} is not a host name"));
                }
                Ok(())
            }
            "file" => {
                if rest.starts_with('/') {
                    Ok(())
                } else {
                    Err(format!(
                        "repo_url {shown:?}: a file:// URL needs an absolute path (file:///srv/repo.git)"
                    ))
                }
            }
            other => Err(format!(
                "repo_url {shown:?}: the scheme {other}:// is not accepted; {accepted}"
            )),
        }
    } else if url.starts_with('/') {
        Ok(())
    } else if let Some((host_part, path)) = scp_like(url) {
        let host = host_part.rsplit('@').next().unwrap_or("");
        if host.is_empty() || path.is_empty() {
            return Err(format!(
                "repo_url {shown:?}: user@host:path needs a host and a path"
            ));
        }
        if host_part.starts_with('-') || host.starts_with('-') {
            return Err(format!(
                "repo_url {shown:?}: a host or user starting with '-' is refused (ssh would take it for an option)"
            ));
        }
        Ok(())
    } else {
        Err(format!(
            "repo_url {shown:?} is not a git URL corral clones (a relative path is not accepted either); {accepted}"
        ))
    }
}

/// `[user@]host:path` with no '/' before the ':' and a plain host name.
fn scp_like(url: &str) -> Option<(&str, &str)> {
    let (head, path) = url.split_once(':')?;
    if head.contains('/') {
        return None;
    }
    let host = head.rsplit('@').next()?;
    let user_ok = head
        .rsplit_once('@')
        .is_none_or(|(u, _)| !u.is_empty() && !u.contains(['@', ':']));
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c));
    (user_ok && host_ok).then_some((head, path))
}

/// Checks a `ref` (branch, tag or commit) the way git's ref names are restricted, and so that
/// git cannot take it for an option.
pub fn validate_ref(r: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("ref {r:?}: {why}"));
    if r.is_empty() {
        return bad("is empty");
    }
    if r.len() > 255 {
        return bad("is longer than 255 bytes");
    }
    if r.starts_with('-') {
        return bad("starts with '-' (git would take it for an option)");
    }
    if r.chars()
        .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
    {
        return bad("contains a character git does not allow in a ref name (space, ~ ^ : ? * [ \\ or a control character)");
    }
    if r.contains("..") || r.contains("@{") || r.ends_with('/') || r.ends_with(".lock") {
        return bad("is not a valid git ref name");
    }
    Ok(())
}

/// Replaces the credentials in every URL of `text`: the password of `user:password@`, and the
/// whole user part of non-ssh URLs (`https://TOKEN@host` carries a token).
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let scheme_start = rest[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+.-".contains(c)))
            .map_or(0, |p| p + 1);
        let scheme = rest[scheme_start..i].to_ascii_lowercase();
        out.push_str(&rest[..i + 3]);
        let after = &rest[i + 3..];
        let end = after
            .find(|c: char| c == '/' || c.is_whitespace() || "'\"<>`".contains(c))
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let shown = match userinfo.split_once(':') {
                    Some((user, _)) if scheme == "ssh" && !user.is_empty() => {
                        format!("{user}:***")
                    }
                    None if scheme == "ssh" => userinfo.to_string(),
                    _ => "***".to_string(),
                };
                out.push_str(&shown);
                out.push('@');
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// What a finished clone reports (for the spawn event).
pub struct Cloned {
    pub commit: Option<String>,
}

/// Who runs git and where its private files go.
pub struct CloneSpec<'a> {
    pub url: &'a str,
    pub git_ref: Option<&'a str>,
    /// The instance's workspace: an existing, empty directory the agent's user owns.
    pub dest: &'a Path,
    /// The instance's HOME and private tmp (the agent's own).
    pub home: &'a Path,
    pub tmp: &'a Path,
    /// Switch to this user (uid, gid) before running git; `None` runs as the daemon's user.
    pub as_user: Option<(u32, u32)>,
    pub timeout: Duration,
}

/// Clones `spec.url` into `spec.dest` and checks out `spec.git_ref`. The error is git's
/// stderr tail (redacted), or the timeout.
pub async fn clone(spec: &CloneSpec<'_>) -> Result<Cloned, String> {
    let deadline = Instant::now() + spec.timeout;
    let config = spec.tmp.join("corral-clone.gitconfig");
    std::fs::write(&config, GIT_CONFIG)
        .map_err(|e| format!("writing {}: {e}", config.display()))?;
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for k in GIT_ENV_ALLOWLIST {
        if let Ok(v) = std::env::var(k) {
            env.insert(k.to_string(), v);
        }
    }
    for (k, v) in [
        ("HOME", spec.home.display().to_string()),
        ("GIT_CONFIG_GLOBAL", config.display().to_string()),
        ("GIT_TERMINAL_PROMPT", "0".into()),
        ("GCM_INTERACTIVE", "never".into()),
        ("LC_ALL", "C".into()),
    ] {
        env.insert(k.into(), v);
    }
    env.entry("GIT_SSH_COMMAND".into())
        .or_insert_with(|| "ssh -o BatchMode=yes".into());
    let dest = spec.dest.display().to_string();
    let mut args: Vec<String> = [
        "-c",
        "protocol.ext.allow=never",
        "-c",
        "protocol.fd.allow=never",
        "clone",
        "--quiet",
        "--no-hardlinks",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(spec.url.to_string());
    args.push(dest.clone());
    let result = async {
        run_git(&args, spec, &env, deadline).await?;
        if let Some(r) = spec.git_ref {
            let checkout = ["-C", &dest, "checkout", "--quiet", r, "--"].map(String::from);
            run_git(&checkout, spec, &env, deadline)
                .await
                .map_err(|e| format!("checking out ref {r:?}: {e}"))?;
        }
        let head = run_git(
            &["-C", &dest, "rev-parse", "HEAD"].map(String::from),
            spec,
            &env,
            deadline,
        )
        .await
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
        Ok(Cloned { commit: head })
    }
    .await;
    let _ = std::fs::remove_file(&config);
    result
}

/// Runs git once; its stdout on success, else its (redacted) stderr tail.
async fn run_git(
    args: &[String],
    spec: &CloneSpec<'_>,
    env: &BTreeMap<String, String>,
    deadline: Instant,
) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(args)
        .env_clear()
        .envs(env)
        .current_dir(spec.dest)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some((uid, gid)) = spec.as_user {
        // As root, std drops the supplementary groups too before switching.
        cmd.uid(uid).gid(gid);
    }
    let spawned = crate::backend::children::spawn_owned(|| {
        #[allow(clippy::disallowed_methods)] // inside spawn_owned
        let child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("spawned git has no pid"))?;
        Ok((child, pid as i32))
    });
    let (child, owned) = spawned.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            "git is not installed (not found on PATH); install git to use repo_url".to_string()
        }
        _ => format!("running git: {e}"),
    })?;
    let pgid = owned.pid();
    let out = match tokio::time::timeout_at(deadline, child.wait_with_output()).await {
        Ok(r) => r.map_err(|e| format!("running git: {e}"))?,
        Err(_) => {
            // git's helpers (remote-https, ssh, index-pack) share its process group.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
            drop(owned);
            return Err(format!(
                "git did not finish within instance.clone_timeout_s = {} s",
                spec.timeout.as_secs()
            ));
        }
    };
    drop(owned);
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    // One line: git's messages joined with "; ".
    let stderr = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let stderr = redact(&stderr);
    let tail = match stderr.len().checked_sub(STDERR_TAIL) {
        Some(cut) if cut > 0 => {
            let mut i = cut;
            while !stderr.is_char_boundary(i) {
                i += 1;
            }
            format!("…{}", &stderr[i..])
        }
        _ => stderr,
    };
    let status = match out.status.code() {
        Some(c) => format!("exit code {c}"),
        None => "killed by a signal".into(),
    };
    Err(format!("git failed ({status}): {tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_accepted_and_refused() {
        for ok in [
            "https://github.com/o/r.git",
            "http://127.0.0.1:8080/r",
            "ssh://git@example.com:2222/o/r.git",
            "git@github.com:o/r.git",
            "example.com:r.git",
            "file:///srv/repo.git",
            "/srv/repo.git",
            "https://user:tok@host/r",
            "https://[::1]:8443/r",
        ] {
            assert!(validate_url(ok).is_ok(), "{ok}: {:?}", validate_url(ok));
        }
        for (bad, want) in [
            ("ext::sh -c touch% /tmp/x", "ext:: transport is refused"),
            ("https://h/a b", "whitespace"),
            ("ext::sh", "ext:: transport is refused"),
            ("EXT::sh", "ext:: transport is refused"),
            ("fd::3", "fd:: transport is refused"),
            ("foo::bar", "remote helper"),
            ("-uhttps://x", "starts with '-'"),
            ("--upload-pack=touch /x", "starts with '-'"),
            ("ssh://-oProxyCommand=x/r", "starting with '-'"),
            ("ssh://-u@host/r", "starting with '-'"),
            ("-oProxyCommand=x:r", "starts with '-'"),
            ("git://host/r", "scheme git://"),
            ("ftp://host/r", "scheme ftp://"),
            ("file://relative/r", "absolute path"),
            ("relative/path", "not a git URL"),
            ("r.git", "not a git URL"),
            ("", "empty"),
            ("https:///r", "no host"),
        ] {
            let e = validate_url(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn refs() {
        for ok in ["main", "feature/x", "v1.2.3", "0123abcd", "release-2024_01"] {
            assert!(validate_ref(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "-b", "a b", "a..b", "a~1", "a:b", "x.lock", "a/", "@{u}",
        ] {
            assert!(validate_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redact("https://user:s3cret@github.com/o/r.git"),
            "https://***@github.com/o/r.git"
        );
        assert_eq!(
            redact("https://ghp_TOKEN@github.com/o/r"),
            "https://***@github.com/o/r"
        );
        assert_eq!(
            redact("ssh://git@host/r ssh://git:pw@host/r"),
            "ssh://git@host/r ssh://git:***@host/r"
        );
        assert_eq!(
            redact("fatal: unable to access 'https://u:p@h/r/': 403"),
            "fatal: unable to access 'https://***@h/r/': 403"
        );
        assert_eq!(redact("git@github.com:o/r.git"), "git@github.com:o/r.git");
        assert_eq!(redact("no url here"), "no url here");
        let e = validate_url("https://u:s3cret@-host/r").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
