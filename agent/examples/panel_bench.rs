//! Figures for the front panel on the simulated header (no GPIO needed):
//!
//!     cargo run --release -p agent --example panel_bench
//!
//! It prints how long a button takes to light the panel (the presenter's feedback; the goal is
//! under 100 ms), how many pin writes one Blinkt! frame costs, and the CPU the panel thread
//! uses idle and while every LED flashes.

use std::time::{Duration, Instant};

use agent::panel::{Panel, PanelConfig};
use hardware::backend::BackendChoice;
use hardware::status::{NodeHealth, Rgb};

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let config = PanelConfig::node_kit(BackendChoice::Simulated);
    let (panel, mut presses) = Panel::start(&config)
        .expect("the simulated header opens")
        .expect("a backend was chosen");
    let gpio = panel.simulated_gpio().expect("simulated").clone();
    panel.set_health(NodeHealth::Ready);

    let presses_wanted = 50;
    let white = vec![Rgb::new(255, 255, 255); 8];
    let mut latencies = Vec::new();
    for _ in 0..presses_wanted {
        gpio.press(27, true);
        let down = Instant::now();
        while gpio.strip(24) != white {
            std::thread::sleep(Duration::from_micros(200));
        }
        latencies.push(down.elapsed());
        gpio.press(27, false);
        presses.recv().await;
        tokio::time::sleep(Duration::from_millis(450)).await;
    }
    latencies.sort();
    println!(
        "button down → panel lit white: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms over {presses_wanted} presses (goal: under 100 ms)",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.95).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );

    let frame = hardware::apa102::frame(&[Rgb::OFF; 8], 8);
    println!(
        "one Blinkt! frame: {} bytes, {} pin writes (data, clock high, clock low per bit)",
        frame.len(),
        frame.len() * 8 * 3
    );

    let cpu_share =
        |since: (f64, Instant)| (cpu_seconds() - since.0) / since.1.elapsed().as_secs_f64() * 100.0;
    let idle = (cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!(
        "panel thread CPU, steady LEDs: {:.2} % of a core",
        cpu_share(idle)
    );
    let busy = (cpu_seconds(), Instant::now());
    for round in 0..5u8 {
        // A new colour every second keeps all 8 LEDs flashing (a flash lasts 1.2 s).
        for pod in 0..8 {
            panel.set_light(&format!("pod-{pod}"), Rgb::new(0, round * 20, 255));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "panel thread CPU, 8 LEDs flashing: {:.2} % of a core",
        cpu_share(busy)
    );
}
