//! `drill-report`: a server's past restore drills, as text, JSON, or one
//! self-contained HTML page (a table and a plot of the measured RTO and the achieved
//! RPO over time) that a DBA can hand to an auditor.

use super::{Context, ExitCode, UsageError};
use crate::catalog::Catalog;
use crate::cli::DrillReportArgs;
use crate::drill::DrillReport;
use crate::output::{human_seconds, Format, Report};
use anyhow::Result;
use serde::Serialize;
use std::io::Write;

/// Runs the verb.
pub fn run(ctx: &Context, a: &DrillReportArgs) -> Result<ExitCode> {
    let servers: Vec<String> = if a.server == "all" {
        ctx.config.servers.keys().cloned().collect()
    } else {
        vec![super::server_config(ctx, &a.server)?.name.clone()]
    };
    let catalog = Catalog::open_existing(&ctx.config.home)?;
    let mut reports: Vec<DrillReport> = Vec::new();
    if let Some(cat) = &catalog {
        for s in &servers {
            for row in cat.drills(s)? {
                match serde_json::from_str::<DrillReport>(&row.report) {
                    Ok(mut r) => {
                        r.id = row.id;
                        reports.push(r);
                    }
                    Err(e) => tracing::warn!("server '{s}': drill {} unreadable: {e}", row.id),
                }
            }
        }
    }
    let html = a.html || ctx.html;
    if html && ctx.format == Format::Json {
        return Err(
            UsageError("drill-report: --html and --format json exclude each other".into()).into(),
        );
    }
    let html_title = html.then(|| {
        if a.server == "all" {
            "every server".to_string()
        } else {
            format!("server {}", a.server)
        }
    });
    ctx.emit(&History {
        reports,
        servers,
        html_title,
    })?;
    Ok(0)
}

/// The drills of the servers asked for, oldest first.
#[derive(Serialize)]
#[serde(transparent)]
struct History {
    reports: Vec<DrillReport>,
    /// The servers asked for (named when none has a drill).
    #[serde(skip)]
    servers: Vec<String>,
    /// With `--html`: the text is the HTML page, with this title.
    #[serde(skip)]
    html_title: Option<String>,
}

impl Report for History {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        if let Some(title) = &self.html_title {
            return writeln!(w, "{}", html_page(title, &self.reports));
        }
        if self.reports.is_empty() {
            return writeln!(w, "No drill recorded for {}", self.servers.join(", "));
        }
        writeln!(
            w,
            "{:>5}  {:<10} {:<20} {:<16} {:<6} {:>12} {:>12}",
            "id", "server", "started (UTC)", "backup", "result", "RTO", "RPO"
        )?;
        for r in &self.reports {
            writeln!(
                w,
                "{:>5}  {:<10} {:<20} {:<16} {:<6} {:>12} {:>12}{}",
                r.id,
                r.server,
                r.started_at.format("%Y-%m-%d %H:%M:%S"),
                r.backup_id.as_deref().unwrap_or("-"),
                if r.ok { "passed" } else { "FAILED" },
                r.rto_secs.map(human_seconds).unwrap_or_else(|| "-".into()),
                r.rpo_secs.map(human_seconds).unwrap_or_else(|| "-".into()),
                r.error
                    .as_deref()
                    .map(|e| format!("  {}", e.lines().next().unwrap_or_default()))
                    .unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

/// Text made safe inside HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page: a table of every drill and an inline SVG plot of RTO and RPO (seconds)
/// against the drills' start times. No script, no external asset.
pub fn html_page(title: &str, reports: &[DrillReport]) -> String {
    let mut rows = String::new();
    for r in reports {
        rows.push_str(&format!(
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            if r.ok { "passed" } else { "failed" },
            r.id,
            esc(&r.server),
            r.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            esc(r.backup_id.as_deref().unwrap_or("-")),
            if r.ok { "passed" } else { "FAILED" },
            r.rto_secs.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into()),
            r.rpo_secs.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into()),
            esc(r.error.as_deref().unwrap_or(""))
        ));
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>pgbk restore drills: {t}</title>\n<style>\
body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}\
td,th{{border:1px solid #bbb;padding:.3em .6em;text-align:left}}tr.failed{{background:#fdd}}\
.rto{{stroke:#1f77b4;fill:#1f77b4}}.rpo{{stroke:#d62728;fill:#d62728}}\
</style></head><body>\n<h1>Restore drills: {t}</h1>\n\
<p>{n} drill(s). RTO: the measured time from the start of the restore to a checked, \
promoted server. RPO: the time between the recovery target (or the drill's start) and \
the newest commit recovered.</p>\n{plot}\n\
<table id=\"drills\"><thead><tr><th>id</th><th>server</th><th>started</th><th>backup</th>\
<th>result</th><th>RTO (s)</th><th>RPO (s)</th><th>error</th></tr></thead>\n<tbody>\n{rows}</tbody></table>\n\
</body></html>",
        t = esc(title),
        n = reports.len(),
        plot = plot(reports),
    )
}

/// An SVG line plot of RTO and RPO per drill, in drill order.
fn plot(reports: &[DrillReport]) -> String {
    let (w, h, pad) = (720.0_f64, 260.0_f64, 40.0_f64);
    let points: Vec<(f64, Option<f64>, Option<f64>)> = reports
        .iter()
        .enumerate()
        .map(|(i, r)| (i as f64, r.rto_secs, r.rpo_secs))
        .collect();
    let max = points
        .iter()
        .flat_map(|(_, a, b)| [*a, *b])
        .flatten()
        .fold(1.0_f64, f64::max);
    let n = (points.len().max(2) - 1) as f64;
    let x = |i: f64| pad + i / n * (w - 2.0 * pad);
    let y = |v: f64| h - pad - v / max * (h - 2.0 * pad);
    let mut svg = format!(
        "<svg id=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
viewBox=\"0 0 {w} {h}\"><title>RTO and RPO per drill (seconds)</title>\
<line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#555\"/>\
<line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"#555\"/>\
<text x=\"4\" y=\"{pad}\" font-size=\"11\">{max:.0} s</text>\
<text x=\"4\" y=\"{b}\" font-size=\"11\">0</text>\
<text x=\"{lx}\" y=\"16\" font-size=\"12\" class=\"rto\">● measured RTO</text>\
<text x=\"{lx2}\" y=\"16\" font-size=\"12\" class=\"rpo\">● achieved RPO</text>",
        b = h - pad,
        r = w - pad,
        lx = pad,
        lx2 = pad + 150.0,
    );
    for (class, pick) in [("rto", 0usize), ("rpo", 1usize)] {
        let pts: Vec<(f64, f64)> = points
            .iter()
            .filter_map(|(i, a, b)| [*a, *b][pick].map(|v| (x(*i), y(v))))
            .collect();
        if pts.len() > 1 {
            let path: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
            svg.push_str(&format!(
                "<polyline class=\"{class}\" fill=\"none\" points=\"{}\"/>",
                path.join(" ")
            ));
        }
        for (a, b) in pts {
            svg.push_str(&format!(
                "<circle class=\"{class} point\" cx=\"{a:.1}\" cy=\"{b:.1}\" r=\"3\"/>"
            ));
        }
    }
    svg.push_str("</svg>");
    svg
}
