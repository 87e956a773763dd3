//! `faq-eval FILE.json [--config PATH] [--min-accuracy 0.9] [--max-near 0.03]
//! [--max-off 0.01]`: runs labelled questions through the FAQ matcher with the shipped
//! configuration (the canned file and `canned.*` keys, layered as the service layers
//! them) and prints accuracy per language and kind, false matches per kind of negative
//! and every miss with its score. Exits 1 when a figure is past its floor, 2 on a usage
//! or input error.

use std::path::PathBuf;
use std::process::ExitCode;

use resilient_qa::config::{Config, process_env};
use resilient_qa::faq::CannedAnswers;
use resilient_qa::faq::eval::{Labelled, evaluate};

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("faq-eval: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool, String> {
    let mut file = None;
    let mut config_file = None;
    let mut min_accuracy = 0.0;
    let mut max_near = 1.0;
    let mut max_off = 1.0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> Result<String, String> {
            args.next().ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, v: String| -> Result<f64, String> {
            v.parse().map_err(|_| format!("{name}: not a number: {v}"))
        };
        match a.as_str() {
            "--config" => config_file = Some(PathBuf::from(value("--config")?)),
            "--min-accuracy" => min_accuracy = number(&a, value(&a)?)?,
            "--max-near" => max_near = number(&a, value(&a)?)?,
            "--max-off" => max_off = number(&a, value(&a)?)?,
            "-h" | "--help" => {
                println!(
                    "usage: faq-eval FILE.json [--config PATH] [--min-accuracy R] [--max-near R] [--max-off R]"
                );
                return Ok(true);
            }
            _ if file.is_none() && !a.starts_with('-') => file = Some(PathBuf::from(a)),
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    let file = file.ok_or(
        "usage: faq-eval FILE.json [--config PATH] [--min-accuracy R] [--max-near R] [--max-off R]",
    )?;
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let rows: Vec<Labelled> = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a list of labelled questions: {e}", file.display()))?;
    let config = Config::load(config_file.as_deref(), &process_env()).map_err(|e| e.to_string())?;
    let canned = CannedAnswers::load(&config.canned.file, config.canned_settings())?;

    let report = evaluate(&canned, &rows);
    print!("{}", report.render(canned.settings.min_score));

    let mut ok = true;
    let mut floor = |holds: bool, what: String| {
        if !holds {
            println!("FAIL: {what}");
            ok = false;
        }
    };
    for (lang, t) in &report.accuracy_by_language {
        floor(
            t.rate() >= min_accuracy,
            format!("{lang} accuracy {:.3} is below {min_accuracy}", t.rate()),
        );
    }
    let near = report.false_match_rate("near");
    floor(
        near <= max_near,
        format!("near-miss false matches {near:.3} exceed {max_near}"),
    );
    let off = report.false_match_rate("off");
    floor(
        off <= max_off,
        format!("off-topic false matches {off:.3} exceed {max_off}"),
    );
    if ok {
        println!("\nall floors hold");
    }
    Ok(ok)
}
