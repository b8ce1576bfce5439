//! Client commands against the local daemon's `/api/v1`.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{anyhow, bail, Context};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::table::{human_duration, render};
use super::Command;
use crate::config::Config;
use crate::model::{now_ms, InstanceInfo, SpawnRequest};

struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Where the daemon listens: `--url`, else the address it wrote to the run dir, else config.
fn base_url(cfg: &Config, url: Option<String>) -> String {
    if let Some(u) = url {
        return u.trim_end_matches('/').to_string();
    }
    let file = cfg.paths().daemon_file();
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            let pid = v["pid"].as_i64().unwrap_or(0) as i32;
            let alive =
                pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
            if let (true, Some(addr)) = (alive, v["addr"].as_str()) {
                return format!("http://{addr}");
            }
        }
    }
    cfg.local_url()
}

impl Client {
    fn new(cfg: &Config, url: Option<String>) -> anyhow::Result<Client> {
        let token = std::env::var("CORRAL_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| (!cfg.server.token.is_empty()).then(|| cfg.server.token.clone()));
        Ok(Client {
            base: base_url(cfg, url),
            token,
            http: reqwest::Client::builder()
                .build()
                .context("building the HTTP client")?,
        })
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = r.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "cannot reach the corral daemon at {} (is `corral serve` running?)",
                    self.base
                )
            } else {
                anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let msg = body["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| status.to_string());
        bail!("{msg}")
    }

    async fn json<T: DeserializeOwned>(&self, r: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let resp = self.send(r).await?;
        resp.json().await.context("reading the daemon's answer")
    }
}

pub fn run(cfg: &Config, url: Option<String>, cmd: Command) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let c = Client::new(cfg, url)?;
        dispatch(&c, cmd).await
    })
}

/// `--limit KEY=VALUE` flags → the request's `limits` (numbers stay numbers).
fn parse_limits(flags: &[String]) -> anyhow::Result<Option<crate::model::LimitsRequest>> {
    if flags.is_empty() {
        return Ok(None);
    }
    let mut obj = serde_json::Map::new();
    for kv in flags {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("--limit {kv:?}: expected KEY=VALUE, e.g. memory_max=512M"))?;
        let value = match v.parse::<u64>() {
            Ok(n) if k != "cpu_max" => json!(n),
            _ => json!(v),
        };
        obj.insert(k.to_string(), value);
    }
    serde_json::from_value(Value::Object(obj))
        .map(Some)
        .map_err(|e| anyhow!("--limit: {e} (keys: memory_max memory_swap_max pids_max cpu_max nofile nproc as data fsize cpu_s)"))
}

fn path_seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn dispatch(c: &Client, cmd: Command) -> anyhow::Result<()> {
    use reqwest::Method;
    match cmd {
        Command::Ls { all, json } => {
            let list: Vec<InstanceInfo> = c
                .json(c.req(Method::GET, &format!("/instances?all={all}")))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", ls_table(&list, now_ms()));
            }
        }
        Command::Spawn {
            name,
            backend,
            idle_timeout,
            wall_timeout,
            ready_pattern,
            env,
            workspace,
            repo_url,
            git_ref,
            limit,
            landlock,
            parent,
            no_wait,
            json,
            argv,
        } => {
            let limits = parse_limits(&limit)?;
            let mut envs = BTreeMap::new();
            for kv in env {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--env {kv:?}: expected KEY=VALUE"))?;
                envs.insert(k.to_string(), v.to_string());
            }
            let req = SpawnRequest {
                name,
                kind: None,
                backend,
                argv,
                env: envs,
                workspace,
                repo_url,
                git_ref,
                idle_timeout_s: idle_timeout,
                wall_timeout_s: wall_timeout,
                ready_pattern,
                wait_ready: !no_wait,
                limits,
                landlock: landlock.then_some(true),
                parent_id: parent,
                ..Default::default()
            };
            let info: InstanceInfo = c.json(c.req(Method::POST, "/instances").json(&req)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("{}\t{}\t{}", info.name, info.id, info.state.as_str());
            }
        }
        Command::Send {
            name,
            text,
            no_enter,
            wait,
            timeout,
        } => {
            let body = json!({ "text": text.join(" "), "enter": !no_enter, "wait": wait, "timeout_s": timeout });
            let v: Value = c
                .json(
                    c.req(
                        Method::POST,
                        &format!("/instances/{}/send", path_seg(&name)),
                    )
                    .json(&body),
                )
                .await?;
            if wait {
                let o = &v["outcome"];
                print!("{}", o["reply"].as_str().unwrap_or(""));
                if o["done"] == Value::Bool(false) {
                    eprintln!("corral: turn {} still running after {timeout} s", v["turn"]);
                }
            } else {
                println!("turn {}", v["turn"]);
            }
        }
        Command::Logs { name, follow, tail } => {
            let path = format!(
                "/instances/{}/logs?follow={follow}&tail_bytes={tail}",
                path_seg(&name)
            );
            let mut resp = c.send(c.req(Method::GET, &path)).await?;
            let mut out = std::io::stdout();
            while let Some(chunk) = resp.chunk().await.context("reading the log stream")? {
                out.write_all(&chunk)?;
                out.flush()?;
            }
        }
        Command::Attach { name, print } => {
            let v: Value = c
                .json(c.req(
                    Method::GET,
                    &format!("/instances/{}/attach", path_seg(&name)),
                ))
                .await?;
            let argv: Vec<String> =
                serde_json::from_value(v["argv"].clone()).context("attach answer")?;
            if print || argv.is_empty() {
                println!(
                    "{}",
                    argv.iter()
                        .map(|a| quote_if_needed(a))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                return Ok(());
            }
            use std::os::unix::process::CommandExt;
            let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
            bail!("running {}: {err}", argv[0]);
        }
        Command::Kill {
            name,
            grace,
            no_wait,
            cascade,
        } => {
            let body = json!({ "grace_s": grace, "wait": !no_wait, "cascade": cascade });
            let v: Value = c
                .json(
                    c.req(
                        Method::POST,
                        &format!("/instances/{}/stop", path_seg(&name)),
                    )
                    .json(&body),
                )
                .await?;
            let below = v["cascade"].as_array().map_or(0, Vec::len);
            let info: InstanceInfo = serde_json::from_value(v)?;
            println!(
                "{}\t{}\t{}{}",
                info.name,
                info.state.as_str(),
                describe_end(&info),
                if cascade {
                    format!("\t(+{below} descendant(s) stopped)")
                } else {
                    String::new()
                }
            );
        }
        Command::Usage { all } => {
            let list: Vec<InstanceInfo> = c
                .json(c.req(Method::GET, &format!("/instances?all={all}")))
                .await?;
            print!("{}", usage_table(&list));
        }
        Command::Resume { name } => {
            let info: InstanceInfo = c
                .json(c.req(
                    Method::POST,
                    &format!("/instances/{}/resume", path_seg(&name)),
                ))
                .await?;
            println!("{}\t{}\t{}", info.name, info.id, info.state.as_str());
        }
        Command::Serve
        | Command::Init { .. }
        | Command::CheckConfig
        | Command::Backup { .. }
        | Command::Hook { .. }
        | Command::Doctor
        | Command::Version => {
            unreachable!("handled in cli::main")
        }
    }
    Ok(())
}

/// Shell-quotes an argument only when it needs it.
fn quote_if_needed(a: &str) -> String {
    let plain = !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b));
    if plain {
        a.to_string()
    } else {
        crate::backend::tmux::shell_quote(a)
    }
}

fn describe_end(i: &InstanceInfo) -> String {
    let mut s = i.reason.map(|r| r.as_str().to_string()).unwrap_or_default();
    if let Some(code) = i.exit_code {
        s.push_str(&format!(" (exit {code})"));
    }
    if let Some(sig) = i.exit_signal {
        s.push_str(&format!(" (signal {sig})"));
    }
    s
}

/// Per-instance tokens and cost, then the total.
pub fn usage_table(list: &[InstanceInfo]) -> String {
    let mut total = crate::agent::prices::Tokens::default();
    let mut cost = 0.0;
    let mut rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            total.add(&i.tokens);
            cost += i.cost_usd;
            let budget = match (i.max_cost_usd, i.max_tokens) {
                (Some(c), _) => format!("${c:.2}"),
                (None, Some(t)) => format!("{t} tok"),
                _ => "-".into(),
            };
            vec![
                i.name.clone(),
                i.kind.as_str().into(),
                i.model.clone().unwrap_or_else(|| "-".into()),
                i.state.as_str().into(),
                i.tokens.input.to_string(),
                i.tokens.output.to_string(),
                i.tokens.cache_write.to_string(),
                i.tokens.cache_read.to_string(),
                format!("${:.4}", i.cost_usd),
                budget,
            ]
        })
        .collect();
    rows.push(vec![
        "TOTAL".into(),
        String::new(),
        String::new(),
        String::new(),
        total.input.to_string(),
        total.output.to_string(),
        total.cache_write.to_string(),
        total.cache_read.to_string(),
        format!("${cost:.4}"),
        String::new(),
    ]);
    render(
        &[
            "NAME", "KIND", "MODEL", "STATE", "INPUT", "OUTPUT", "CACHE_W", "CACHE_R", "COST",
            "BUDGET",
        ],
        &rows,
    )
}

pub fn ls_table(list: &[InstanceInfo], now: i64) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            let live = i.state.is_live();
            vec![
                i.name.clone(),
                i.id.clone(),
                i.kind.as_str().into(),
                i.backend.as_str().into(),
                if live {
                    i.state.as_str().into()
                } else {
                    format!("{} {}", i.state.as_str(), describe_end(i))
                        .trim()
                        .to_string()
                },
                human_duration(now - i.created_at),
                if live {
                    human_duration(now - i.last_activity_at)
                } else {
                    "-".into()
                },
                format!("${:.2}", i.cost_usd),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no instances\n".into();
    }
    render(
        &[
            "NAME", "ID", "KIND", "BACKEND", "STATE", "AGE", "IDLE", "COST",
        ],
        &rows,
    )
}
