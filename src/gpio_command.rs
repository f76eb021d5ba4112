//! `bramble gpio`: shows a node's front panel (status LED, LED strip, buttons) through the
//! master's node proxy, and presses the buttons of a simulated panel.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

#[derive(Args)]
pub struct GpioArgs {
    /// The node whose panel to show.
    node: String,
    /// The kubeconfig (default: $KUBECONFIG, ./.bramble/admin.kubeconfig,
    /// /var/lib/bramble/admin.kubeconfig, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Press a simulated button, by action (kill) or BCM pin (27).
    #[arg(long, value_name = "BUTTON")]
    press: Option<String>,
    /// Hold it down this long; 1.5s or more is a long press (kill: revive).
    #[arg(long, default_value = "300ms", value_parser = protocol::chaos::parse_duration)]
    hold: Duration,
    /// Print the panel as JSON.
    #[arg(long)]
    json: bool,
}

/// `#rrggbb` as a coloured block on a true-colour terminal, or as text elsewhere.
fn swatch(hex: &str, colour: bool) -> String {
    let channel = |range: std::ops::Range<usize>| {
        hex.get(range)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0)
    };
    let (r, g, b) = (channel(1..3), channel(3..5), channel(5..7));
    match (colour, (r, g, b) == (0, 0, 0)) {
        (_, true) => "··".to_owned(),
        (true, false) => format!("\x1b[38;2;{r};{g};{b}m██\x1b[0m"),
        (false, false) => hex.to_owned(),
    }
}

fn describe(node: &str, panel: &Value, colour: bool) -> String {
    let mut out = format!(
        "{node}: {} GPIO\n",
        panel["backend"].as_str().unwrap_or("?")
    );
    let led = &panel["statusLed"];
    if led.is_object() {
        out.push_str(&format!(
            "  status LED ({}):  {}  {} ({} blink)\n",
            led["pins"].as_str().unwrap_or(""),
            swatch(
                if led["lit"] == true {
                    led["colour"].as_str().unwrap_or("")
                } else {
                    "#000000"
                },
                colour
            ),
            led["health"].as_str().unwrap_or(""),
            led["blink"].as_str().unwrap_or(""),
        ));
    }
    let strip = &panel["strip"];
    if strip.is_object() {
        let leds: Vec<String> = strip["leds"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|hex| swatch(hex.as_str().unwrap_or(""), colour))
            .collect();
        out.push_str(&format!(
            "  strip ({}):  {}\n",
            strip["pins"].as_str().unwrap_or(""),
            leds.join(" ")
        ));
        for (index, shown) in strip["showing"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(what) = shown.as_str() {
                out.push_str(&format!("    LED {index}: {what}\n"));
            }
        }
    }
    for button in panel["buttons"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  button {} on BCM{}{}\n",
            button["action"].as_str().unwrap_or(""),
            button["pin"],
            if button["pressed"] == true {
                " (held down)"
            } else {
                ""
            }
        ));
    }
    for problem in panel["problems"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  not working: {}\n",
            problem.as_str().unwrap_or("")
        ));
    }
    out
}

pub async fn run(args: GpioArgs) -> anyhow::Result<()> {
    let kubeconfig = args.kubeconfig.or_else(tui::default_kubeconfig).context(
        "no kubeconfig: pass --kubeconfig FILE (a local cluster's is .bramble/admin.kubeconfig)",
    )?;
    let client = protocol::client::Client::from_kubeconfig(&kubeconfig)?;
    let base = format!("/api/v1/nodes/{}/proxy/gpio", args.node);
    if let Some(button) = &args.press {
        let path = format!(
            "{base}/buttons/{button}/press?hold={}ms",
            args.hold.as_millis()
        );
        client
            .request(http::Method::POST, &path, "application/json", None)
            .await
            .with_context(|| format!("pressing {button} on {}", args.node))?;
        println!(
            "pressed {button} on {} for {} ms",
            args.node,
            args.hold.as_millis()
        );
        // Let the panel show what the press did.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let panel = client
        .get(&base)
        .await
        .with_context(|| format!("reading the panel of {}", args.node))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&panel)?);
    } else {
        let colour = std::io::IsTerminal::is_terminal(&std::io::stdout())
            && std::env::var_os("NO_COLOR").is_none();
        print!("{}", describe(&args.node, &panel, colour));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panel_reads_as_text() {
        let panel = serde_json::json!({
            "backend": "simulated",
            "statusLed": {"pins": "17", "health": "ready", "blink": "steady", "lit": true, "colour": "#00dc00"},
            "strip": {"pins": "blinkt", "leds": ["#ffdc00", "#000000"], "showing": ["default/web-1", null]},
            "buttons": [{"pin": 27, "action": "kill", "pressed": false}],
            "problems": [],
        });
        let text = describe("pi-1", &panel, false);
        assert!(
            text.contains("status LED (17):  #00dc00  ready (steady blink)"),
            "{text}"
        );
        assert!(text.contains("strip (blinkt):  #ffdc00 ··"), "{text}");
        assert!(text.contains("LED 0: default/web-1"), "{text}");
        assert!(text.contains("button kill on BCM27"), "{text}");
    }
}
