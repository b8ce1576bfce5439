//! The read-only status page at `/`: server-rendered HTML that refreshes itself.

use axum::extract::State;
use axum::response::Html;

use super::AppState;
use crate::cli::table::human_duration;
use crate::model::{now_ms, InstanceInfo};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn row(i: &InstanceInfo, now: i64, max_cost: f64) -> String {
    let live = i.state.is_live();
    let idle = if live {
        human_duration(now - i.last_activity_at)
    } else {
        "-".into()
    };
    let reason = i.reason.map(|r| r.as_str()).unwrap_or("");
    let pct = if max_cost > 0.0 {
        (i.cost_usd / max_cost * 100.0).clamp(0.0, 100.0)
    } else {
        0.0
    };
    format!(
        "<tr class=\"{cls}\"><td>{name}</td><td><code>{id}</code></td><td>{kind}</td><td>{backend}</td>\
         <td class=\"st\">{state}</td><td>{reason}</td><td>{age}</td><td>{idle}</td>\
         <td><div class=\"bar\"><span style=\"width:{pct:.0}%\"></span></div>${cost:.2}</td>\
         <td><code>{cmd}</code></td></tr>\n",
        cls = if live { "live" } else { "ended" },
        name = esc(&i.name),
        id = esc(&i.id),
        kind = i.kind.as_str(),
        backend = i.backend.as_str(),
        state = i.state.as_str(),
        reason = reason,
        age = human_duration(now - i.created_at),
        cost = i.cost_usd,
        cmd = esc(&i.argv.join(" ")),
    )
}

pub async fn page(State(st): State<AppState>) -> Html<String> {
    let now = now_ms();
    let mut list = st.sup.list(true).await.unwrap_or_default();
    // live first, then the most recent ended ones
    list.sort_by_key(|i| (!i.state.is_live(), -i.created_at));
    list.truncate(200);
    let max_cost = list.iter().map(|i| i.cost_usd).fold(0.0, f64::max);
    let live = list.iter().filter(|i| i.state.is_live()).count();
    let rows: String = list.iter().map(|i| row(i, now, max_cost)).collect();
    Html(format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>corral</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: 4px 10px; border-bottom: 1px solid #ddd; }}
tr.ended {{ color: #888; }}
td.st {{ font-weight: 600; }}
.bar {{ display: inline-block; width: 60px; height: 8px; background: #eee; margin-right: 6px; }}
.bar span {{ display: block; height: 100%; background: #4a7; }}
code {{ font-size: 12px; }}
</style></head>
<body>
<h1>corral</h1>
<p>{live} live of {max} allowed · up {uptime} · version {version} · refreshes every 5 s</p>
<table>
<tr><th>name</th><th>id</th><th>kind</th><th>backend</th><th>state</th><th>reason</th><th>age</th><th>idle</th><th>cost</th><th>command</th></tr>
{rows}</table>
</body></html>
"#,
        max = st.cfg.limits.max_instances,
        uptime = human_duration(st.started.elapsed().as_millis() as i64),
        version = env!("CARGO_PKG_VERSION"),
    ))
}
