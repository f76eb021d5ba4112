//! The bramble dashboard (`bramble tui`): live pod placement with chaos controls, for a projector or an SSH session.
//!
//! ```text
//!   feeds (list + watch per kind, usage poll) ─┐
//!   keys (a thread reading the terminal) ──────┼─► inbox ─► App::handle ─► Command ─► actions task
//!   ticks (4 Hz) ──────────────────────────────┤     │                              └► monkey
//!   action outcomes, monkey events ────────────┘     └─► draw(&App): on visible change, ≤ 10 per second
//! ```
//!
//! Network I/O never runs on the UI loop: feeds and actions are tasks that post messages, so
//! the dashboard stays responsive when the master is gone, says so, and catches up by itself
//! when it is back.
#![deny(missing_docs)]

pub mod actions;
pub mod app;
pub mod cluster;
pub mod draw;
pub mod feed;
pub mod look;

#[cfg(test)]
mod fixtures;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use protocol::chaos::{ChaosMonkey, ChaosTarget, MonkeyPolicy};
use protocol::client::{Client, ClientError};
use tokio::sync::mpsc;

use crate::app::{App, Command, Message, Outcome};
use crate::look::Look;

/// How often the screen may animate.
const TICK: Duration = Duration::from_millis(250);
/// The shortest time between two frames: a busy cluster sends hundreds of changes a second,
/// and drawing each would cost the Pi's CPU without showing the audience anything more.
const FRAME: Duration = Duration::from_millis(100);

/// How the dashboard was started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The kubeconfig to use.
    pub kubeconfig: PathBuf,
    /// No confirmations for destructive keys (for the stage).
    pub demo: bool,
    /// The chaos monkey's policy.
    pub monkey: MonkeyPolicy,
}

/// Why the dashboard could not run.
#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    /// The kubeconfig is unusable.
    #[error("cannot use the kubeconfig")]
    Kubeconfig(#[source] ClientError),
    /// The terminal could not be set up or drawn on.
    #[error("terminal")]
    Terminal(#[source] std::io::Error),
}

/// The cluster's bare join secret, if the master answers within a second (the help shows it).
async fn join_secret(client: &Client) -> Option<String> {
    use base64::Engine;
    let secret = tokio::time::timeout(
        Duration::from_secs(1),
        client.get("/api/v1/namespaces/kube-system/secrets/bramble-join-token"),
    )
    .await
    .ok()?
    .ok()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["secret"].as_str()?)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Runs the dashboard until the user quits.
pub async fn run(options: Options) -> Result<(), TuiError> {
    let client = Client::from_kubeconfig(&options.kubeconfig).map_err(TuiError::Kubeconfig)?;
    let (inbox_sender, mut inbox) = mpsc::unbounded_channel::<Message>();
    let _feeds = feed::start(client.clone(), inbox_sender.clone());
    read_terminal_input(inbox_sender.clone());
    let ticker = {
        let sender = inbox_sender.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            loop {
                every.tick().await;
                if sender.send(Message::Tick).is_err() {
                    return;
                }
            }
        })
    };
    let mut app = App::new(
        &format!("https://{}", client.server_address()),
        &client.master_host(),
        Look::from_env(),
        options.demo,
        options.monkey.clone(),
        Instant::now(),
    );
    app.join_token = join_secret(&client).await;
    let mut terminal = ratatui::try_init().map_err(TuiError::Terminal)?;
    let mut monkey: Option<ChaosMonkey<Client>> = None;
    let mut last_frame = Instant::now();
    // A frame is owed but waits for FRAME to pass; messages keep being applied meanwhile, so
    // list pages never pile up in the inbox.
    let mut frame_owed = false;
    let result = loop {
        let next_frame = tokio::time::Instant::from_std(last_frame + FRAME);
        let first = tokio::select! {
            message = inbox.recv() => match message {
                Some(message) => Some(message),
                None => break Ok(()),
            },
            _ = tokio::time::sleep_until(next_frame), if frame_owed => None,
        };
        // Apply everything that is waiting, then draw at most once. Feeds redraw only when
        // something visible changed (see below), ticks only while something animates; keys,
        // outcomes and the monkey always.
        let redraws = |message: &Message| !matches!(message, Message::Tick | Message::Feed(_));
        let mut redraw = frame_owed
            || first.as_ref().is_some_and(&redraws)
            || (matches!(first, Some(Message::Tick)) && app.is_animating());
        let mut messages: Vec<Message> = first.into_iter().collect();
        while let Ok(message) = inbox.try_recv() {
            redraw |= redraws(&message);
            messages.push(message);
        }
        let listed = messages
            .iter()
            .any(|m| matches!(m, Message::Feed(feed::Update::Listed { last: true, .. })));
        app.set_clock(Instant::now(), jiff::Timestamp::now());
        for message in messages {
            let Some(command) = app.handle(message) else {
                continue;
            };
            match command {
                Command::Quit => {}
                Command::StartMonkey => {
                    let (events, mut received) = mpsc::unbounded_channel();
                    monkey = Some(ChaosMonkey::start(
                        client.clone(),
                        options.monkey.clone(),
                        events,
                    ));
                    app.set_monkey_running(true);
                    let sender = inbox_sender.clone();
                    tokio::spawn(async move {
                        while let Some(event) = received.recv().await {
                            if sender.send(Message::Monkey(event)).is_err() {
                                return;
                            }
                        }
                    });
                }
                Command::StopMonkey => {
                    if let Some(running) = monkey.take() {
                        let sender = inbox_sender.clone();
                        tokio::spawn(async move {
                            let _ = sender.send(Message::Done(stop_monkey(running).await));
                        });
                    }
                    app.set_monkey_running(false);
                }
                command => {
                    let client = client.clone();
                    let sender = inbox_sender.clone();
                    tokio::spawn(async move {
                        let outcome = actions::run(&client, &command).await;
                        let _ = sender.send(Message::Done(outcome));
                    });
                }
            }
        }
        if app.quit {
            break Ok(());
        }
        redraw |= app.take_changes();
        if listed {
            return_freed_memory();
        }
        if redraw && last_frame.elapsed() < FRAME {
            frame_owed = true;
            continue;
        }
        frame_owed = false;
        if redraw {
            last_frame = Instant::now();
            if let Err(error) = terminal.draw(|frame| draw::draw(&app, frame)) {
                break Err(TuiError::Terminal(error));
            }
        }
    };
    ticker.abort();
    ratatui::restore();
    if let Some(running) = monkey {
        // Leave the cluster as the monkey found it, but do not hang on a dead master.
        match tokio::time::timeout(Duration::from_secs(5), stop_monkey(running)).await {
            Ok(outcome) => println!("{}", outcome.message),
            Err(_) => println!("the master did not answer: nodes killed by the monkey stay dead (`bramble sim revive NODE`)"),
        }
    }
    result
}

async fn stop_monkey(monkey: ChaosMonkey<Client>) -> Outcome {
    match monkey.stop().await {
        Ok(revived) if revived.is_empty() => Outcome {
            message: "monkey stopped".to_owned(),
            ok: true,
        },
        Ok(revived) => Outcome {
            message: format!("monkey stopped; revived {}", revived.join(", ")),
            ok: true,
        },
        Err(error) => Outcome {
            message: format!(
                "monkey stopped, but a node it killed could not be revived: {}",
                protocol::error::error_chain(&error)
            ),
            ok: false,
        },
    }
}

/// Hands memory freed after a big list back to the system. A list of thousands of pods is
/// parsed page by page and boiled down to compact structs, but glibc keeps the freed pages
/// (70 MB of them for 3,000 pods, against 13 MB in use); musl returns them by itself.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it takes the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Reads keys and resizes on a thread of its own (crossterm's reads block).
fn read_terminal_input(inbox: mpsc::UnboundedSender<Message>) {
    std::thread::Builder::new()
        .name("tui-input".into())
        .spawn(move || loop {
            match ratatui::crossterm::event::read() {
                Ok(event) => {
                    if inbox.send(Message::Input(event)).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        })
        .expect("spawning the input thread");
}

/// The kubeconfig to use when none is given: `$KUBECONFIG`, a local cluster's
/// `./.bramble/admin.kubeconfig`, a Pi master's `/var/lib/bramble/admin.kubeconfig`, then
/// `~/.kube/config`.
pub fn default_kubeconfig() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        let first = std::env::split_paths(&path).next()?;
        return Some(first);
    }
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube/config"));
    [
        Some(PathBuf::from(".bramble/admin.kubeconfig")),
        Some(PathBuf::from("/var/lib/bramble/admin.kubeconfig")),
        home,
    ]
    .into_iter()
    .flatten()
    .find(|path| path.is_file())
}
