//! `watrunk-bench report RESULTS --docs DIR`: turns the `sim.load` lines of one run of
//! scripts/bench-capacity.sh into the "Capacity" section of DIR/benchmarks.md (between its
//! markers; everything else in the file is kept), DIR/benchmarks.json (the headline figures) and
//! DIR/capacity.png (CPU per packet and loss against concurrent calls, per relay).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use serde_json::{json, Value};

const BEGIN: &str = "<!-- capacity:begin -->";
const END: &str = "<!-- capacity:end -->";
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One relay of the sweep: what `sim load` went through, with which keys, in which direction.
#[derive(Clone, Copy)]
struct Series {
    through: &'static str,
    srtp: &'static str,
    direction: &'static str,
    name: &'static str,
    color: RGBColor,
}

const fn series(
    through: &'static str,
    srtp: &'static str,
    direction: &'static str,
    name: &'static str,
    color: RGBColor,
) -> Series {
    Series {
        through,
        srtp,
        direction,
        name,
        color,
    }
}

const USERS_CALL: &str = "to-business";
const BUSINESS_CALLS: &str = "to-user";
/// The relays of the sweep, as the report names them.
#[rustfmt::skip]
const SERIES: [Series; 5] = [
    series("watrunk", "dtls", USERS_CALL, "watrunk (DTLS)", RGBColor(200, 30, 30)),
    series("watrunk", "dtls", BUSINESS_CALLS, "watrunk, business calls users (DTLS)", RGBColor(150, 0, 150)),
    series("watrunk", "sdes", USERS_CALL, "watrunk (SDES)", RGBColor(240, 140, 0)),
    series("rtpengine", "sdes", USERS_CALL, "rtpengine userspace (SDES)", RGBColor(30, 80, 200)),
    series("bare", "none", USERS_CALL, "bare UDP relay", RGBColor(0, 0, 0)),
];
const DTLS: Series = SERIES[0];
const DTLS_OUT: Series = SERIES[1];
const SDES: Series = SERIES[2];
const RTPENGINE: Series = SERIES[3];
const BARE: Series = SERIES[4];

/// A run's direction (runs from before `--direction` were all users calling the business).
fn direction(r: &Value) -> &str {
    r["direction"].as_str().unwrap_or(USERS_CALL)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some("report"), Some(results)) = (args.first().map(String::as_str), args.get(1)) else {
        bail!("usage: watrunk-bench report RESULTS.jsonl [--docs DIR]");
    };
    let docs = args
        .iter()
        .position(|a| a == "--docs")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| PathBuf::from("docs"), PathBuf::from);
    let text =
        std::fs::read_to_string(results).with_context(|| format!("cannot read {results}"))?;
    let runs: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "sim.load")
        .collect();
    if runs.is_empty() {
        bail!("{results} has no sim.load lines");
    }
    let report = Report::new(runs);
    let headline = report.headline();
    // The figures other scripts write into the same file (bench-sipp.sh's `sipp_ratio` and
    // `sipp_call_ratio`) are kept; this report's own keys are replaced.
    let json_path = docs.join("benchmarks.json");
    let mut figures = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Map<String, Value>>(&t).ok())
        .unwrap_or_default();
    if let Value::Object(ours) = &headline {
        figures.extend(ours.clone());
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&figures)? + "\n")?;
    report.plot(&docs.join("capacity.png"))?;
    let section = report.markdown(&headline);
    let md_path = docs.join("benchmarks.md");
    let md = std::fs::read_to_string(&md_path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let md = match (md.find(BEGIN), md.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{section}{}", &md[..b], &md[e + END.len()..]),
        _ => format!("{}\n{section}\n", md.trim_end()),
    };
    std::fs::write(&md_path, md)?;
    println!("{}", serde_json::to_string(&headline)?);
    Ok(())
}

struct Report {
    runs: Vec<Value>,
}

/// Concurrent calls, µs per packet, loss %.
type Point = (f64, f64, f64);

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

fn spread(v: &Value, path: &[&str]) -> String {
    let Some(s) = path.iter().try_fold(v, |v, k| v.get(k)) else {
        return "–".into();
    };
    if s.is_null() {
        return "–".into();
    }
    format!(
        "{} / {} / {}",
        fmt(num(s, &["p50"]), 2),
        fmt(num(s, &["p99"]), 2),
        fmt(num(s, &["max"]), 2)
    )
}

/// The worse direction's loss, in percent.
fn loss(v: &Value) -> Option<f64> {
    let a = num(v, &["loss_pct", "to_agent"])?;
    let b = num(v, &["loss_pct", "to_meta"])?;
    Some(a.max(b))
}

fn clean(v: &Value) -> bool {
    v["failed"] == 0 && loss(v) == Some(0.0)
}

impl Report {
    fn new(runs: Vec<Value>) -> Report {
        Report { runs }
    }

    fn sweep(&self, of: Series) -> Vec<&Value> {
        let mut runs: Vec<&Value> = self
            .runs
            .iter()
            .filter(|r| {
                r["through"] == of.through
                    && r["srtp"] == of.srtp
                    && direction(r) == of.direction
                    && r["hold"] == 0.0
            })
            .collect();
        runs.sort_by_key(|r| r["calls"].as_u64());
        runs
    }

    fn at(&self, of: Series, calls: u64) -> Option<&Value> {
        self.sweep(of)
            .into_iter()
            .find(|r| r["calls"].as_u64() == Some(calls))
    }

    fn setups(&self) -> Vec<&Value> {
        self.runs
            .iter()
            .filter(|r| r["hold"].as_f64().is_some_and(|h| h > 0.0))
            .collect()
    }

    /// watrunk's CPU per full DTLS set-up of a user's call (TLS, INVITE, 407, INVITE, 200, ACK, ICE,
    /// DTLS, the BYE at the end), in ms: the set-up run with the shortest calls and no failure, its
    /// relay CPU per call less the packets each call relayed at the sweep's cost per packet.
    fn setup_cpu_ms(&self, us_per_packet: Option<f64>) -> Option<f64> {
        let run = self
            .setups()
            .into_iter()
            .filter(|r| r["failed"] == 0 && direction(r) == USERS_CALL && r["srtp"] == "dtls")
            .min_by(|a, b| {
                num(a, &["hold"])
                    .partial_cmp(&num(b, &["hold"]))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })?;
        let per_call = num(run, &["run", "relay_cpu_ms_per_call"])?;
        let calls = num(run, &["total"]).filter(|&n| n > 0.0)?;
        let packets =
            num(run, &["packets", "agent_received"])? + num(run, &["packets", "meta_received"])?;
        let media_ms = packets / calls * us_per_packet? / 1000.0;
        Some(((per_call - media_ms) * 1000.0).round() / 1000.0)
    }

    fn sizes(&self) -> Vec<u64> {
        let set: BTreeSet<u64> = self
            .runs
            .iter()
            .filter(|r| r["hold"] == 0.0)
            .filter_map(|r| r["calls"].as_u64())
            .collect();
        set.into_iter().collect()
    }

    fn headline(&self) -> Value {
        // Every figure is taken at the largest size watrunk carried with no failed call and no loss.
        let dtls = self.sweep(DTLS);
        let top = dtls.iter().rev().find(|r| clean(r)).copied();
        let n = top.and_then(|r| r["calls"].as_u64()).unwrap_or(0);
        let per_packet = |of| {
            self.at(of, n)
                .and_then(|r| num(r, &["window", "relay_us_per_packet"]))
        };
        let business_calls = self.at(DTLS_OUT, n);
        let fastest_setup = self
            .setups()
            .into_iter()
            .filter(|r| r["failed"] == 0 && direction(r) == USERS_CALL)
            .filter_map(|r| num(r, &["setups_per_second"]))
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        let setup_cpu_ms = self.setup_cpu_ms(per_packet(DTLS));
        let p99 = top.and_then(|r| {
            let a = num(r, &["latency_ms", "to_agent", "p99"])?;
            let b = num(r, &["latency_ms", "to_meta", "p99"])?;
            Some(a.max(b))
        });
        json!({
            "calls_per_core": top.and_then(|r| num(r, &["window", "calls_per_relay_core"])),
            "max_concurrent_calls": top.and_then(|r| r["calls"].as_u64()),
            "loss_pct_at_max": top.and_then(loss),
            "cpu_us_per_packet": per_packet(DTLS),
            "bare_relay_us_per_packet": per_packet(BARE),
            "rtpengine_us_per_packet": per_packet(RTPENGINE),
            "setups_per_second": fastest_setup,
            "setup_cpu_ms": setup_cpu_ms,
            "generator_cores_at_max": top.and_then(|r| num(r, &["window", "generator_cores"])),
            "p99_added_latency_ms": p99,
            "rss_kib_per_call": top.and_then(|r| num(r, &["rss_kib", "per_call"])),
            "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "measured_at_calls": n,
            "business_calls_users": {
                "loss_pct": business_calls.and_then(loss),
                "cpu_us_per_packet": per_packet(DTLS_OUT),
                "rss_kib_per_call": business_calls.and_then(|r| num(r, &["rss_kib", "per_call"])),
            },
        })
    }

    fn markdown(&self, headline: &Value) -> String {
        let mut s = String::new();
        let date = std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let window = self
            .runs
            .iter()
            .find_map(|r| num(r, &["window", "secs"]))
            .unwrap_or(0.0);
        let _ = writeln!(s, "{BEGIN}");
        let _ = writeln!(
            s,
            "## Capacity: whole calls through `watrunk serve`, rtpengine and a bare UDP relay (same run)\n"
        );
        let _ = writeln!(
            s,
            "<!-- generated by scripts/bench-capacity.sh (watrunk-bench report); edit that, not this -->\n"
        );
        let _ = writeln!(
            s,
            "Run {date}: `nproc` = {}, {cpu}, Linux {}. Command: `scripts/bench-capacity.sh`; \
             each row is one `watrunk sim load` run of its own, measured over a {window:.0} s window at \
             full load; µs per packet is the relay process's CPU time (user + system, all threads) \
             over the packets it relayed in the window, both ways.\n",
            headline["nproc"],
            kernel.trim()
        );
        let _ = writeln!(
            s,
            "![CPU per relayed packet and loss against concurrent calls](capacity.png)\n"
        );
        let _ = writeln!(
            s,
            "| calls | watrunk DTLS µs/pkt | business calls users, DTLS µs/pkt | watrunk SDES µs/pkt | rtpengine µs/pkt | bare µs/pkt | \
             watrunk DTLS / bare | business calls users / bare | watrunk SDES / bare | watrunk SDES / rtpengine | \
             loss % (DTLS, business calls users, SDES, rtpengine, bare) | watrunk cores (DTLS) | generator cores (DTLS) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for n in self.sizes() {
            let cost = |of| {
                self.at(of, n)
                    .and_then(|r| num(r, &["window", "relay_us_per_packet"]))
            };
            let (d, out, sd, rt, b) = (
                cost(DTLS),
                cost(DTLS_OUT),
                cost(SDES),
                cost(RTPENGINE),
                cost(BARE),
            );
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                _ => "–".into(),
            };
            let losses: Vec<String> = SERIES
                .iter()
                .map(|of| fmt(self.at(*of, n).and_then(loss), 3))
                .collect();
            let dtls = self.at(DTLS, n);
            let gen_cores = dtls.and_then(|r| {
                Some(num(r, &["window", "generator_cpu_secs"])? / num(r, &["window", "secs"])?)
            });
            let _ = writeln!(
                s,
                "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fmt(d, 2),
                fmt(out, 2),
                fmt(sd, 2),
                fmt(rt, 2),
                fmt(b, 2),
                ratio(d, b),
                ratio(out, b),
                ratio(sd, b),
                ratio(sd, rt),
                losses.join(", "),
                fmt(dtls.and_then(|r| num(r, &["window", "relay_cores"])), 2),
                fmt(gen_cores, 2),
            );
        }
        let _ = writeln!(
            s,
            "\nOne-way latency through the relay, in the window (p50 / p99 / max ms; the generator's own \
             SRTP hop on Meta's side is included), and RFC 3550 jitter (p99 over calls, ms):\n"
        );
        let _ = writeln!(s, "| calls | relay | Meta → agent | agent → Meta | jitter p99 (→ agent, → Meta) | failed calls |");
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for n in self.sizes() {
            for of in SERIES {
                let Some(r) = self.at(of, n) else { continue };
                let name = of.name;
                let _ = writeln!(
                    s,
                    "| {n} | {name} | {} | {} | {}, {} | {} |",
                    spread(r, &["latency_ms", "to_agent"]),
                    spread(r, &["latency_ms", "to_meta"]),
                    fmt(num(r, &["jitter_ms", "to_agent", "p99"]), 2),
                    fmt(num(r, &["jitter_ms", "to_meta", "p99"]), 2),
                    r["failed"],
                );
            }
        }
        let _ = writeln!(
            s,
            "\nCall set-up through watrunk (a user's call: a new TLS connection, INVITE, 407, INVITE with \
             credentials, 200, ACK, times from the first INVITE; a business's call: `POST /calls` to \
             watrunk's API, INVITE over watrunk's one TLS connection to Meta, 407, INVITE with \
             credentials, 200, ACK, times from the POST; then ICE and DTLS; ms, p50 / p99 / max):\n"
        );
        let _ = writeln!(s, "| run | offered / achieved set-ups/s | failed | INVITE → 200 | → ICE | → DTLS (SRTP keys) | → first RTP from watrunk | watrunk CPU ms per call (with its media) |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        let mut setup_rows: Vec<&Value> = self.setups();
        for of in [DTLS, DTLS_OUT] {
            setup_rows.extend(
                self.sweep(of)
                    .into_iter()
                    .filter(|r| r["calls"].as_u64() == self.sizes().last().copied()),
            );
        }
        for r in setup_rows {
            let who = if direction(r) == BUSINESS_CALLS {
                "business calls users, "
            } else {
                ""
            };
            let label = if r["hold"] == 0.0 {
                format!("{} calls held (sweep, {who}DTLS)", r["calls"])
            } else {
                format!("{} calls, {} s each ({who}DTLS)", r["total"], r["hold"])
            };
            let _ = writeln!(
                s,
                "| {label} | {} / {} | {} | {} | {} | {} | {} | {} |",
                fmt(num(r, &["rate"]), 0),
                fmt(num(r, &["setups_per_second"]), 1),
                r["failed"],
                spread(r, &["setup_ms", "answered"]),
                spread(r, &["setup_ms", "ice"]),
                spread(r, &["setup_ms", "secure"]),
                spread(r, &["setup_ms", "first_rtp"]),
                fmt(num(r, &["run", "relay_cpu_ms_per_call"]), 2),
            );
        }
        let _ = writeln!(
            s,
            "\nResident memory of the relay process per call (VmRSS at full load minus before the first \
             call, divided by the calls; KiB):\n"
        );
        let names: Vec<&str> = SERIES.iter().map(|x| x.name).collect();
        let _ = writeln!(s, "| calls | {} |", names.join(" | "));
        let _ = writeln!(s, "|---|{}", "---|".repeat(SERIES.len()));
        for n in self.sizes() {
            let cells: Vec<String> = SERIES
                .iter()
                .map(|of| {
                    fmt(
                        self.at(*of, n)
                            .and_then(|r| num(r, &["rss_kib", "per_call"])),
                        1,
                    )
                })
                .collect();
            let _ = writeln!(s, "| {n} | {} |", cells.join(" | "));
        }
        let _ = writeln!(
            s,
            "\nHeadline figures (docs/benchmarks.json): watrunk with DTLS at the largest size it carried with no failed call and no loss:\n\n```json\n{}\n```\n{END}",
            serde_json::to_string_pretty(headline).unwrap_or_default()
        );
        s
    }

    fn plot(&self, path: &Path) -> Result<()> {
        let font = std::fs::read(FONT).with_context(|| format!("the plot's font {FONT}"))?;
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            Box::leak(font.into_boxed_slice()),
        )
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;
        let max_calls = self.sizes().last().copied().unwrap_or(1000) as f64 * 1.05;
        let series: Vec<(&str, RGBColor, Vec<Point>)> = SERIES
            .iter()
            .map(|of| {
                let points = self
                    .sweep(*of)
                    .into_iter()
                    .filter_map(|r| {
                        Some((
                            r["calls"].as_f64()?,
                            num(r, &["window", "relay_us_per_packet"])?,
                            loss(r)?,
                        ))
                    })
                    .collect();
                (of.name, of.color, points)
            })
            .collect();
        let max_cost = series
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|x| x.1))
            .fold(1.0f64, f64::max)
            * 1.15;
        let max_loss = series
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|x| x.2))
            .fold(0.1f64, f64::max)
            * 1.15;
        let root = BitMapBackend::new(path, (1200, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(600);
        let charts = [
            (left, "CPU per relayed packet (µs)", max_cost, 1usize),
            (right, "packet loss (%)", max_loss, 2usize),
        ];
        for (area, title, top, column) in charts {
            let mut chart = ChartBuilder::on(&area)
                .caption(title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(48)
                .build_cartesian_2d(0f64..max_calls, 0f64..top)?;
            chart
                .configure_mesh()
                .x_desc("concurrent calls")
                .label_style(("sans-serif", 13))
                .draw()?;
            for (name, color, points) in &series {
                let xy: Vec<(f64, f64)> = points
                    .iter()
                    .map(|p| (p.0, if column == 1 { p.1 } else { p.2 }))
                    .collect();
                let color = *color;
                chart
                    .draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))?
                    .label(*name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart.draw_series(xy.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .label_font(("sans-serif", 13))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    }
}
