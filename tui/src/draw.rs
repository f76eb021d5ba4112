//! Drawing the dashboard: `draw(&App, frame)` lays out the screens and only reads the state.
//!
//! ```text
//!   header: cluster, nodes Ready, pods, filters, monkey
//!   banner: master unreachable / status of the last action        (only when there is one)
//!   ┌ placement: one card per node (+ unscheduled) ┐┌ details ─────┐   80 columns: the side
//!   │ arch, board, cpu and memory bars, LEDs,      ││ deployments  │   panes go under the
//!   │ pods as coloured glyphs, pulses and ghosts   ││ events       │   placement instead
//!   └──────────────────────────────────────────────┘└──────────────┘
//!   key hints (what the keys do now)
//! ```

use hardware::status::{node_signal, pod_colour, NodeHealth};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use ratatui::Frame;

use crate::app::{App, Focus, Lane, Mode};
use crate::cluster::{Node, Pod, PodState};
use crate::look::{Look, Signal};

/// Narrowest node card.
const CARD_MIN_WIDTH: u16 = 20;
/// Widest node card (few nodes on a wide screen).
const CARD_MAX_WIDTH: u16 = 44;
/// Shortest node card: borders, four lines of facts, two lines of pods.
const CARD_MIN_HEIGHT: u16 = 8;
/// Width of the side column on wide screens.
const SIDE_WIDTH: u16 = 46;
/// Screens at least this wide get the side column.
const WIDE: u16 = 120;
/// LEDs on a Blinkt!.
const POD_LEDS: usize = 8;

/// Draws the whole screen.
pub fn draw(app: &App, frame: &mut Frame) {
    let area = frame.area();
    let banner = banner(app);
    let [header, banner_area, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(u16::from(banner.is_some())),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(header_line(app, header.width)), header);
    if let Some(banner) = banner {
        frame.render_widget(Paragraph::new(banner), banner_area);
    }
    if body.width >= WIDE {
        let [placement, side] =
            Layout::horizontal([Constraint::Fill(1), Constraint::Length(SIDE_WIDTH)]).areas(body);
        draw_placement(app, frame, placement);
        let deployments = (app.deployments().len() as u16 + 3).clamp(4, 12);
        let [details, deployment_area, events] = Layout::vertical([
            Constraint::Length(12),
            Constraint::Length(deployments),
            Constraint::Fill(1),
        ])
        .areas(side);
        draw_details(app, frame, details);
        draw_deployments(app, frame, deployment_area);
        draw_events(app, frame, events);
    } else {
        let bottom = if body.height >= 28 { 8 } else { 6 };
        let [placement, panes] =
            Layout::vertical([Constraint::Fill(1), Constraint::Length(bottom)]).areas(body);
        draw_placement(app, frame, placement);
        let [left, right] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(panes);
        match app.focus {
            Focus::Deployments => draw_deployments(app, frame, left),
            Focus::Placement => draw_details(app, frame, left),
        }
        draw_events(app, frame, right);
    }
    frame.render_widget(Paragraph::new(footer_line(app, footer.width)), footer);
    match &app.mode {
        Mode::Help => draw_help(app, frame, area),
        Mode::Confirm(command) => {
            let question = command.confirmation().unwrap_or_default();
            draw_confirm(app, frame, area, &question);
        }
        Mode::Browse | Mode::LabelFilter(_) => {}
    }
}

fn header_line(app: &App, width: u16) -> Line<'static> {
    let look = &app.look;
    let nodes = app.cluster.nodes.values();
    let ready = nodes
        .clone()
        .filter(|n| n.health(false) == NodeHealth::Ready)
        .count();
    let total = app.cluster.nodes.len();
    let visible: Vec<&Pod> = app.cluster.pods.values().filter(|p| app.shows(p)).collect();
    let unscheduled = visible.iter().filter(|p| p.node.is_none()).count();
    let failing = visible.iter().filter(|p| p.state.is_failing()).count();
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let quiet = look.signal(Signal::Quiet);
    let node_style = if ready == total && total > 0 {
        look.signal(Signal::Good)
    } else {
        look.signal(Signal::Bad)
    };
    let mut spans = vec![Span::styled(
        " bramble ",
        bold.add_modifier(Modifier::REVERSED),
    )];
    if width >= 110 {
        spans.push(Span::styled(format!(" {} ", app.server), quiet));
    }
    spans.push(Span::styled(
        format!(" nodes {ready}/{total} Ready "),
        node_style,
    ));
    spans.push(Span::raw(format!(" pods {}", visible.len())));
    if unscheduled > 0 {
        spans.push(Span::styled(
            format!(" {unscheduled} waiting"),
            look.signal(Signal::Attention),
        ));
    }
    if failing > 0 {
        spans.push(Span::styled(
            format!(" {failing} failing"),
            look.signal(Signal::Bad),
        ));
    }
    spans.push(Span::raw(format!(
        "  ns {}",
        app.namespace.as_deref().unwrap_or("all")
    )));
    if let Some((text, _)) = &app.labels {
        spans.push(Span::raw(format!("  labels {text}")));
    }
    let monkey = if app.monkey.running {
        Span::styled(
            "  monkey ON ",
            look.signal(Signal::Bad).add_modifier(Modifier::BOLD),
        )
    } else {
        Span::styled("  monkey off", quiet)
    };
    spans.push(monkey);
    Line::from(spans)
}

/// The line under the header: the master being gone outranks everything.
fn banner(app: &App) -> Option<Line<'static>> {
    let look = &app.look;
    if let Some((since, error)) = &app.lost {
        let seconds = app.now.saturating_duration_since(*since).as_secs();
        let warning = if look.unicode { "⚠" } else { "!" };
        return Some(Line::from(Span::styled(
            format!(
                " {warning} master unreachable for {seconds}s ({error}); reconnecting, showing the last known state "
            ),
            look.signal(Signal::Bad).add_modifier(Modifier::REVERSED),
        )));
    }
    if let Some(message) = app.refused.values().next() {
        let stop = if look.unicode { "⛔" } else { "!" };
        return Some(Line::from(Span::styled(
            format!(
                " {stop} not allowed: {message}. This kubeconfig's user has a narrower role: the \
                 dashboard shows what it may see (an admin kubeconfig shows everything) "
            ),
            look.signal(Signal::Attention)
                .add_modifier(Modifier::REVERSED),
        )));
    }
    if app.live.is_empty() {
        return Some(Line::from(Span::styled(
            format!(" connecting to {} ...", app.server),
            look.signal(Signal::Attention),
        )));
    }
    let status = app.status.as_ref()?;
    let style = if status.bad {
        look.signal(Signal::Bad)
    } else {
        look.signal(Signal::Good)
    };
    Some(Line::from(Span::styled(format!(" {}", status.text), style)))
}

fn footer_line(app: &App, width: u16) -> Line<'static> {
    let look = &app.look;
    if let Mode::LabelFilter(text) = &app.mode {
        return Line::from(vec![
            Span::styled(
                " label selector: ",
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!("{text}_")),
            Span::styled("   Enter apply  Esc cancel", look.signal(Signal::Quiet)),
        ]);
    }
    let key_style = Style::new().add_modifier(Modifier::REVERSED);
    let mut spans = Vec::new();
    let mut used = 0usize;
    for (key, what) in app.hints() {
        let key = look.key(key);
        let cost = key.chars().count() + what.chars().count() + 3;
        if used + cost > width as usize {
            break;
        }
        used += cost;
        spans.push(Span::styled(key.to_owned(), key_style));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    Line::from(spans)
}

// ----- placement -----

fn draw_placement(app: &App, frame: &mut Frame, area: Rect) {
    let lanes = app.lanes();
    if lanes.is_empty() {
        let text = if app.live.is_empty() {
            "waiting for the master ..."
        } else {
            "no nodes yet: start agents, or `bramble sim --nodes 3` for simulated ones"
        };
        frame.render_widget(
            Paragraph::new(text).style(app.look.signal(Signal::Quiet)),
            area,
        );
        return;
    }
    let selected = app.selected_lane();
    let mut area = area;
    if lanes.first() == Some(&Lane::Pending) {
        let [strip, rest] =
            Layout::vertical([Constraint::Length(3), Constraint::Fill(1)]).areas(area);
        draw_pending_strip(app, frame, strip, selected == Some(Lane::Pending));
        area = rest;
    }
    let lanes: Vec<Lane> = lanes
        .into_iter()
        .filter(|lane| matches!(lane, Lane::Node(_)))
        .collect();
    if lanes.is_empty() || area.height == 0 {
        return;
    }
    let per_row = ((area.width / CARD_MIN_WIDTH).max(1) as usize).min(lanes.len());
    let card_width = (area.width / per_row as u16).min(CARD_MAX_WIDTH);
    let rows = lanes.len().div_ceil(per_row);
    let card_height = (area.height / rows as u16).max(CARD_MIN_HEIGHT.min(area.height));
    let mut visible_rows = (area.height / card_height.max(1)).max(1) as usize;
    let overflow = rows > visible_rows;
    if overflow && area.height > card_height {
        // The last line says what is hidden.
        visible_rows = ((area.height - 1) / card_height).max(1) as usize;
    }
    let selected_index = selected
        .as_ref()
        .and_then(|s| lanes.iter().position(|l| l == s))
        .unwrap_or(0);
    let first_row = (selected_index / per_row + 1).saturating_sub(visible_rows);
    for (index, lane) in lanes.iter().enumerate() {
        let row = index / per_row;
        if row < first_row || row >= first_row + visible_rows {
            continue;
        }
        let card = Rect::new(
            area.x + (index % per_row) as u16 * card_width,
            area.y + (row - first_row) as u16 * card_height,
            card_width,
            card_height,
        )
        .intersection(area);
        draw_card(app, frame, card, lane, selected.as_ref() == Some(lane));
    }
    if overflow {
        let above = first_row * per_row;
        let below = lanes
            .len()
            .saturating_sub((first_row + visible_rows) * per_row);
        let text = format!(" {above} nodes above, {below} below: ←→ moves through them ",);
        let line = Rect::new(area.x, area.bottom() - 1, area.width, 1);
        frame.render_widget(
            Paragraph::new(text).style(app.look.signal(Signal::Quiet)),
            line,
        );
    }
}

/// Pods no node has taken yet, in a strip over the cards.
fn draw_pending_strip(app: &App, frame: &mut Frame, area: Rect, selected: bool) {
    let look = &app.look;
    let pods = app.pods_in(&Lane::Pending);
    let chosen = app.selected_pod().map(|p| p.uid.clone());
    let mut spans = Vec::new();
    for pod in &pods {
        let is_selected = chosen.as_ref() == Some(&pod.uid);
        spans.push(Span::styled(
            format!("{} {}", look.glyph(pod.state), pod.name),
            pod_style(app, pod, is_selected),
        ));
        spans.push(Span::raw("  "));
    }
    let marker = match (selected, look.unicode) {
        (false, _) => "",
        (true, true) => "▶",
        (true, false) => ">",
    };
    let block = Block::bordered()
        .border_set(if selected {
            look.selected_border()
        } else {
            look.border()
        })
        .border_style(look.signal(Signal::Attention))
        .title(format!("{marker} waiting for a node ({}) ", pods.len()));
    frame.render_widget(Paragraph::new(Line::from(spans)).block(block), area);
}

fn draw_card(app: &App, frame: &mut Frame, area: Rect, lane: &Lane, selected: bool) {
    let look = &app.look;
    let Lane::Node(name) = lane else {
        return;
    };
    let Some(node) = app.cluster.nodes.get(name) else {
        return;
    };
    let pods = app.pods_in(lane);
    let ghosts = app.ghosts_in(lane);
    let (mut title, border_style) = node_title(app, node);
    let facts = node_facts(app, node, &pods, area.width.saturating_sub(2));
    if selected {
        title.insert(0, Span::raw(if look.unicode { "▶" } else { ">" }));
    }
    let block = Block::bordered()
        .border_set(if selected {
            look.selected_border()
        } else {
            look.border()
        })
        .border_style(border_style)
        .title(Line::from(title));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let mut lines = facts;
    let room = (inner.height as usize).saturating_sub(lines.len());
    lines.extend(pod_lines(app, &pods, &ghosts, inner.width as usize, room));
    frame.render_widget(Paragraph::new(lines), inner);
}

fn node_title(app: &App, node: &Node) -> (Vec<Span<'static>>, Style) {
    let look = &app.look;
    let health = shown_health(app, node);
    let signal = match health {
        NodeHealth::Ready | NodeHealth::Starting => Signal::Good,
        NodeHealth::NotReady | NodeHealth::Stopped => Signal::Bad,
        NodeHealth::Unknown => Signal::Attention,
    };
    let mut word = look.signal(signal).add_modifier(Modifier::BOLD);
    if app.now.saturating_duration_since(node.changed_at) < crate::cluster::PULSE {
        word = word.add_modifier(Modifier::REVERSED);
    }
    let mut title = vec![
        Span::styled(
            format!(" {} ", node.name),
            Style::new().add_modifier(Modifier::BOLD),
        ),
        Span::styled(format!("{} ", node.status_word()), word),
    ];
    if node.killed {
        title.push(Span::styled(
            "killed ",
            look.signal(Signal::Bad).add_modifier(Modifier::BOLD),
        ));
    }
    if node.unschedulable {
        title.push(Span::styled("cordoned ", look.signal(Signal::Attention)));
    }
    if node.is_master {
        title.push(Span::styled("master ", look.signal(Signal::Quiet)));
    }
    if app.monkey.killed.contains(&node.name) {
        title.push(Span::styled("(monkey) ", look.signal(Signal::Bad)));
    }
    (title, look.signal(signal))
}

/// The node's health as its LED shows it; everything is unknown while the master is gone.
fn shown_health(app: &App, node: &Node) -> NodeHealth {
    if app.lost.is_some() {
        return NodeHealth::Unknown;
    }
    node.health(app.node_has_starting_pods(&node.name))
}

fn node_facts(app: &App, node: &Node, pods: &[&Pod], width: u16) -> Vec<Line<'static>> {
    let look = &app.look;
    let quiet = look.signal(Signal::Quiet);
    let usage = app.cluster.usage_of(&node.name);
    let mut about = node.arch.clone();
    if !node.board.is_empty() {
        about.push_str(" · ");
        about.push_str(&node.board);
    }
    if !look.unicode {
        about = about.replace('·', "-");
    }
    vec![
        Line::styled(about, quiet),
        bar_line(
            look,
            "cpu",
            usage.cpu,
            node.cpu_allocatable,
            &format!("{}/{}", cores(usage.cpu), cores(node.cpu_allocatable)),
            width,
        ),
        bar_line(
            look,
            "mem",
            usage.memory,
            node.memory_allocatable,
            &memory_figures(usage.memory, node.memory_allocatable),
            width,
        ),
        led_line(app, node, pods),
    ]
}

fn bar_line(
    look: &Look,
    label: &str,
    used: i64,
    total: i64,
    figures: &str,
    width: u16,
) -> Line<'static> {
    let bar_width = (width as usize).saturating_sub(label.len() + figures.len() + 2);
    let fraction = if total > 0 {
        (used as f64 / total as f64).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let filled = (fraction * bar_width as f64).round() as usize;
    let signal = match fraction {
        f if f >= 0.9 => Signal::Bad,
        f if f >= 0.7 => Signal::Attention,
        _ => Signal::Good,
    };
    let (full, empty) = look.bar_cells();
    Line::from(vec![
        Span::raw(format!("{label} ")),
        Span::styled(full.repeat(filled), look.signal(signal)),
        Span::styled(empty.repeat(bar_width - filled), look.signal(Signal::Quiet)),
        Span::raw(format!(" {figures}")),
    ])
}

/// The virtual LEDs: the node's status LED, then one per pod as on a Blinkt!.
fn led_line(app: &App, node: &Node, pods: &[&Pod]) -> Line<'static> {
    let look = &app.look;
    let millis = app.now.saturating_duration_since(app.started).as_millis() as u64;
    let signal = node_signal(shown_health(app, node));
    let lit = signal.blink.lit_at(millis);
    let mut spans = vec![
        Span::styled(look.led(lit), look.fg(signal.colour)),
        Span::raw(" "),
    ];
    for pod in pods.iter().take(POD_LEDS) {
        spans.push(Span::styled(
            look.led(true),
            look.fg(pod_colour(&pod.app, pod.state.light())),
        ));
    }
    for _ in pods.len()..POD_LEDS {
        spans.push(Span::styled(look.led(false), look.signal(Signal::Quiet)));
    }
    let count = match pods.len() {
        1 => " 1 pod".to_owned(),
        n => format!(" {n} pods"),
    };
    spans.push(Span::raw(count));
    Line::from(spans)
}

/// A pod's style: its owner's colour, reversed while it pulses, underlined when selected.
fn pod_style(app: &App, pod: &Pod, selected: bool) -> Style {
    let look = &app.look;
    let mut style = if pod.state.is_failing() {
        look.signal(Signal::Bad)
    } else {
        look.fg(hardware::status::app_colour(&pod.owner.name))
    };
    if matches!(pod.state, PodState::Pending | PodState::ContainerCreating) {
        style = style.add_modifier(Modifier::DIM);
    }
    if app.pulsing(pod) {
        style = style.add_modifier(Modifier::REVERSED | Modifier::BOLD);
    }
    if selected {
        style = style.add_modifier(Modifier::UNDERLINED | Modifier::BOLD);
    }
    style
}

fn pod_lines(
    app: &App,
    pods: &[&Pod],
    ghosts: &[&crate::cluster::Ghost],
    width: usize,
    room: usize,
) -> Vec<Line<'static>> {
    let look = &app.look;
    let selected = app.selected_pod().map(|p| p.uid.clone());
    let ghost_style = look
        .signal(Signal::Quiet)
        .add_modifier(Modifier::CROSSED_OUT);
    let ghost_glyph = look.glyph(PodState::Terminating);
    if room == 0 {
        return Vec::new();
    }
    // Ghosts only while there is room for them.
    let ghosts = if pods.len() + ghosts.len() <= room {
        ghosts
    } else {
        &[]
    };
    if pods.len() <= room {
        // One line per pod: glyph and name.
        let mut lines: Vec<Line> = pods
            .iter()
            .map(|pod| {
                let is_selected = selected.as_ref() == Some(&pod.uid);
                let marker = if is_selected { ">" } else { " " };
                Line::from(vec![
                    Span::raw(marker),
                    Span::styled(
                        format!("{} {}", look.glyph(pod.state), pod.name),
                        pod_style(app, pod, is_selected),
                    ),
                ])
            })
            .collect();
        lines.extend(ghosts.iter().map(|ghost| {
            Line::from(vec![
                Span::raw(" "),
                Span::styled(format!("{ghost_glyph} {}", ghost.pod.name), ghost_style),
            ])
        }));
        return lines;
    }
    // Too many for a line each: a grid of glyphs, spaced out if there is room.
    let spaced = pods.len() + ghosts.len() <= (width / 2).max(1) * room;
    let cell_width = if spaced { 2 } else { 1 };
    let per_line = (width / cell_width).max(1);
    let capacity = per_line * room;
    let mut cells: Vec<Span> = Vec::new();
    let shown = if pods.len() + ghosts.len() > capacity {
        // Room for the "+N" at the end.
        capacity.saturating_sub(4)
    } else {
        capacity
    };
    let gap = if spaced { " " } else { "" };
    for pod in pods.iter().take(shown) {
        let is_selected = selected.as_ref() == Some(&pod.uid);
        cells.push(Span::styled(
            format!("{}{gap}", look.glyph(pod.state)),
            pod_style(app, pod, is_selected),
        ));
    }
    for _ in ghosts.iter().take(shown.saturating_sub(pods.len())) {
        cells.push(Span::styled(format!("{ghost_glyph}{gap}"), ghost_style));
    }
    let hidden = (pods.len() + ghosts.len()).saturating_sub(shown);
    if hidden > 0 {
        cells.push(Span::styled(
            format!("+{hidden}"),
            look.signal(Signal::Quiet),
        ));
    }
    cells
        .chunks(per_line)
        .map(|chunk| Line::from(chunk.to_vec()))
        .collect()
}

// ----- side panes -----

fn pane<'a>(app: &App, title: &'a str, focused: bool) -> Block<'a> {
    let look = &app.look;
    Block::bordered()
        .border_set(if focused {
            look.selected_border()
        } else {
            look.border()
        })
        .border_style(look.signal(Signal::Quiet))
        .title(Span::styled(
            format!(" {title} "),
            Style::new().add_modifier(Modifier::BOLD),
        ))
}

fn field(name: &str, value: String) -> Line<'static> {
    Line::from(vec![
        Span::styled(
            format!("{name:<8} "),
            Style::new().add_modifier(Modifier::BOLD),
        ),
        Span::raw(value),
    ])
}

fn draw_details(app: &App, frame: &mut Frame, area: Rect) {
    let lines = if let Some(pod) = app.selected_pod() {
        let node = pod.node.clone().unwrap_or_else(|| "-".to_owned());
        let mut lines = vec![
            Line::styled(
                format!("pod {}/{}", pod.namespace, pod.name),
                pod_style(app, pod, false).remove_modifier(Modifier::REVERSED),
            ),
            field(
                "state",
                format!(
                    "{} {} {}/{} ready, {} restarts",
                    app.look.glyph(pod.state),
                    pod.state.word(),
                    pod.ready,
                    pod.containers,
                    pod.restarts
                ),
            ),
            field("node", node),
            field("ip", or_dash(&pod.ip)),
            field("owner", format!("{} {}", pod.owner.kind, pod.owner.name)),
            field("image", pod.images.join(", ")),
        ];
        if !pod.volumes.is_empty() {
            lines.push(field("volumes", pod.volumes.join(", ")));
        }
        lines.push(field("age", app.age(&pod.created)));
        lines
    } else if let Some(Lane::Node(name)) = app.selected_lane() {
        match app.cluster.nodes.get(&name) {
            Some(node) => node_details(app, node),
            None => Vec::new(),
        }
    } else {
        vec![Line::raw("pods waiting for a node: see their events")]
    };
    let block = pane(app, "details", false);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    frame.render_widget(Paragraph::new(lines), inner);
}

fn node_details(app: &App, node: &Node) -> Vec<Line<'static>> {
    let usage = app.cluster.usage_of(&node.name);
    let pods = app.pods_in(&Lane::Node(node.name.clone()));
    let starting = pods.iter().filter(|p| p.state.is_starting()).count();
    let failing = pods.iter().filter(|p| p.state.is_failing()).count();
    let mut status = node.status_word().to_owned();
    if node.killed {
        status.push_str(", killed (chaos)");
    }
    if node.unschedulable {
        status.push_str(", cordoned");
    }
    if node.is_master {
        status.push_str(", master");
    }
    let percent = |used: i64, total: i64| {
        if total > 0 {
            format!(" ({}%)", used * 100 / total)
        } else {
            String::new()
        }
    };
    let mut lines = vec![
        Line::styled(
            format!("node {}", node.name),
            Style::new().add_modifier(Modifier::BOLD),
        ),
        field("status", status),
        field("address", or_dash(&node.address)),
        field("board", format!("{} {}", node.arch, node.board)),
        field("kernel", or_dash(&node.kernel)),
        field(
            "cpu",
            format!(
                "{} of {}{}",
                cores(usage.cpu),
                cores(node.cpu_allocatable),
                percent(usage.cpu, node.cpu_allocatable)
            ),
        ),
        field(
            "memory",
            format!(
                "{} of {}{}",
                bytes(usage.memory),
                bytes(node.memory_allocatable),
                percent(usage.memory, node.memory_allocatable)
            ),
        ),
        field(
            "pods",
            format!("{} ({starting} starting, {failing} failing)", pods.len()),
        ),
    ];
    if !node.taints.is_empty() {
        lines.push(field("taints", node.taints.join(", ")));
    }
    lines.push(field("age", app.age(&node.created)));
    lines
}

fn draw_deployments(app: &App, frame: &mut Frame, area: Rect) {
    let focused = app.focus == Focus::Deployments;
    let block = pane(app, "deployments", focused);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let deployments = app.deployments();
    let selected = app.selected_deployment();
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let name_width = (inner.width as usize).saturating_sub(19).max(8);
    let mut lines = vec![Line::styled(
        format!(
            "{:<name_width$} {:>5} {:>5} {:>6}",
            "NAME", "WANT", "READY", "UPDATED"
        ),
        bold,
    )];
    if deployments.is_empty() {
        lines.push(Line::styled("none", app.look.signal(Signal::Quiet)));
    }
    for deployment in deployments {
        let name = if app.namespace.is_none() && deployment.namespace != "default" {
            format!("{}/{}", deployment.namespace, deployment.name)
        } else {
            deployment.name.clone()
        };
        let healthy =
            deployment.ready >= deployment.desired && deployment.up_to_date >= deployment.desired;
        let mut style = if healthy {
            app.look.fg(hardware::status::app_colour(&deployment.name))
        } else {
            app.look.signal(Signal::Attention)
        };
        if focused && selected.is_some_and(|s| std::ptr::eq(s, deployment)) {
            style = style.add_modifier(Modifier::REVERSED);
        }
        lines.push(Line::styled(
            format!(
                "{:<name_width$} {:>5} {:>5} {:>6}",
                truncate(&name, name_width),
                deployment.desired,
                deployment.ready,
                deployment.up_to_date
            ),
            style,
        ));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_events(app: &App, frame: &mut Frame, area: Rect) {
    let block = pane(app, "events", false);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let room = inner.height as usize;
    let shown: Vec<_> = app.cluster.events.iter().collect();
    let lines: Vec<Line> = shown[shown.len().saturating_sub(room)..]
        .iter()
        .map(|event| {
            let style = if event.warning {
                app.look.signal(Signal::Attention)
            } else {
                Style::new()
            };
            let mut spans = vec![
                Span::styled(
                    format!("{} ", clock_time(&event.time)),
                    app.look.signal(Signal::Quiet),
                ),
                Span::styled(
                    format!("{} ", event.reason),
                    style.add_modifier(Modifier::BOLD),
                ),
            ];
            if !event.object.is_empty() && inner.width >= 60 {
                spans.push(Span::raw(format!("{} ", event.object)));
            }
            spans.push(Span::styled(event.message.clone(), style));
            Line::from(spans)
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

// ----- dialogs -----

fn popup(area: Rect, width: u16, height: u16) -> Rect {
    area.centered(
        Constraint::Length(width.min(area.width)),
        Constraint::Length(height.min(area.height)),
    )
}

fn draw_confirm(app: &App, frame: &mut Frame, area: Rect, question: &str) {
    let width = (question.chars().count() as u16 + 4).clamp(30, area.width.saturating_sub(4));
    let lines = vec![
        Line::raw(question.to_owned()),
        Line::raw(""),
        Line::styled("y yes    n no", Style::new().add_modifier(Modifier::BOLD)),
    ];
    let wrapped_height = (question.chars().count() as u16 / width.saturating_sub(2).max(1)) + 5;
    let rect = popup(area, width, wrapped_height);
    frame.render_widget(Clear, rect);
    let block = Block::bordered()
        .border_set(app.look.selected_border())
        .border_style(app.look.signal(Signal::Bad))
        .title(" confirm ");
    frame.render_widget(
        Paragraph::new(lines)
            .block(block)
            .wrap(ratatui::widgets::Wrap { trim: true }),
        rect,
    );
}

fn draw_help(app: &App, frame: &mut Frame, area: Rect) {
    let look = &app.look;
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let keys = [
        (look.key("←→"), "select a node (h/l)"),
        (
            look.key("↑↓"),
            "select a pod on it (j/k); Esc: back to the node",
        ),
        ("x / r", "kill / revive the node (its chaos hook)"),
        ("c / u", "cordon / uncordon the node"),
        ("d", "drain the node (DaemonSet pods stay)"),
        (
            "+ / -",
            "scale the pod's deployment (or the one picked after Tab)",
        ),
        ("Del", "delete the pod"),
        ("m", "start / stop the chaos monkey"),
        ("n", "next namespace (then all)"),
        ("/", "filter pods by label selector (app=web)"),
        ("Tab", "move between placement and deployments"),
        ("q", "quit (the monkey's victims are revived)"),
    ];
    let mut lines: Vec<Line> = keys
        .iter()
        .map(|(key, what)| {
            Line::from(vec![
                Span::styled(format!(" {key:<7}"), bold),
                Span::raw((*what).to_owned()),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    let states = [
        PodState::Running,
        PodState::NotReady,
        PodState::ContainerCreating,
        PodState::Pending,
        PodState::Terminating,
        PodState::CrashLoopBackOff,
        PodState::ImagePullBackOff,
        PodState::Failed,
        PodState::Completed,
    ];
    for row in states.chunks(5) {
        let legend: Vec<Span> = row
            .iter()
            .flat_map(|state| {
                [
                    Span::styled(format!(" {}", look.glyph(*state)), bold),
                    Span::raw(format!(" {:<12}", short_word(*state))),
                ]
            })
            .collect();
        lines.push(Line::from(legend));
    }
    let policy = &app.monkey.policy;
    lines.push(Line::raw(format!(
        " monkey: a kill every {}s, dead for {}s, keeps {} nodes Ready{}",
        policy.interval.as_secs(),
        policy.dead_for.as_secs(),
        policy.min_ready,
        policy
            .nodes
            .as_ref()
            .map(|s| format!(", only nodes matching {s}"))
            .unwrap_or_default()
    )));
    if !app.demo {
        lines.push(Line::raw(
            " kill, drain, delete and the monkey ask first (--demo: they do not)",
        ));
    }
    if let Some(token) = &app.join_token {
        lines.push(Line::from(vec![
            Span::raw(" new Pis join with "),
            Span::styled(format!("join_token = \"{token}\""), bold),
        ]));
    }
    let rect = popup(area, 78, lines.len() as u16 + 2);
    frame.render_widget(Clear, rect);
    let block = Block::bordered()
        .border_set(look.border())
        .title(" help: keys and glyphs ");
    frame.render_widget(Paragraph::new(lines).block(block), rect);
}

fn short_word(state: PodState) -> &'static str {
    match state {
        PodState::NotReady => "not ready",
        PodState::ContainerCreating => "creating",
        PodState::CrashLoopBackOff => "crashing",
        PodState::ImagePullBackOff => "no image",
        other => other.word(),
    }
}

// ----- formatting -----

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(width.saturating_sub(1)).collect();
    short.push('~');
    short
}

/// Millicores as cores with one decimal (`0.4`, `4`).
fn cores(millis: i64) -> String {
    if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{:.1}", millis as f64 / 1000.0)
    }
}

/// Bytes in the largest binary unit that keeps a short number (`310Mi`, `1.8Gi`).
fn bytes(value: i64) -> String {
    const UNITS: [&str; 4] = ["", "Ki", "Mi", "Gi"];
    let mut amount = value as f64;
    let mut unit = 0;
    while amount >= 1024.0 && unit < UNITS.len() - 1 {
        amount /= 1024.0;
        unit += 1;
    }
    if amount < 10.0 && unit > 0 && amount.fract() > 0.05 {
        format!("{amount:.1}{}", UNITS[unit])
    } else {
        format!("{}{}", amount.round(), UNITS[unit])
    }
}

/// Memory in use and allocatable in the allocatable's unit (`0.9/1.8Gi`): short enough for
/// a narrow card.
fn memory_figures(used: i64, total: i64) -> String {
    let total_text = bytes(total);
    let unit = total_text.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
    let scale = match unit {
        "Gi" => 1024f64.powi(3),
        "Mi" => 1024f64.powi(2),
        "Ki" => 1024.0,
        _ => 1.0,
    };
    let used = used as f64 / scale;
    let used = if used < 10.0 && used.fract() > 0.05 {
        format!("{used:.1}")
    } else {
        format!("{}", used.round())
    };
    format!("{used}/{total_text}")
}

/// The local wall-clock time of an RFC 3339 timestamp (`14:03:07`).
fn clock_time(time: &str) -> String {
    match time.parse::<jiff::Timestamp>() {
        Ok(stamp) => stamp
            .to_zoned(jiff::tz::TimeZone::system())
            .strftime("%H:%M:%S")
            .to_string(),
        Err(_) => "--:--:--".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ratatui::backend::TestBackend;
    use ratatui::buffer::Buffer;
    use ratatui::crossterm::event::{Event, KeyCode, KeyEvent};
    use ratatui::style::Color;
    use ratatui::Terminal;

    use super::*;
    use crate::app::Message;
    use crate::cluster::Resource;
    use crate::feed::Update;
    use crate::fixtures::{demo_app, node, pod};
    use crate::look::Colours;

    fn render(app: &App, width: u16, height: u16) -> Buffer {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| draw(app, frame)).unwrap();
        terminal.backend().buffer().clone()
    }

    fn text(buffer: &Buffer) -> String {
        let area = buffer.area;
        (0..area.height)
            .map(|y| {
                let line: String = (0..area.width).map(|x| buffer[(x, y)].symbol()).collect();
                line.trim_end().to_owned()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Snapshots with what changes from run to run (clock times, addresses, ages) filtered out.
    macro_rules! assert_screen {
        ($name:expr, $buffer:expr) => {
            insta::with_settings!({filters => vec![
                (r"\b\d{2}:\d{2}:\d{2}\b", "[time]"),
                (r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(:\d+)?\b", "[address]"),
                (r"\b\d+[smhd]\b", "[age]"),
            ]}, {
                insta::assert_snapshot!($name, text(&$buffer));
            });
        };
    }

    fn key(app: &mut App, code: KeyCode) -> Option<crate::app::Command> {
        app.handle(Message::Input(Event::Key(KeyEvent::from(code))))
    }

    #[test]
    fn main_screen_80x24() {
        assert_screen!("main_80x24", render(&demo_app(), 80, 24));
    }

    #[test]
    fn main_screen_large() {
        assert_screen!("main_180x50", render(&demo_app(), 180, 50));
    }

    #[test]
    fn a_selected_pod_shows_its_details() {
        let mut app = demo_app();
        key(&mut app, KeyCode::Down);
        key(&mut app, KeyCode::Down);
        assert_screen!("pod_selected_80x24", render(&app, 80, 24));
    }

    #[test]
    fn help_screen() {
        let mut app = demo_app();
        key(&mut app, KeyCode::Char('?'));
        assert_screen!("help_80x24", render(&app, 80, 24));
    }

    #[test]
    fn the_join_token_is_in_the_help_only() {
        let mut app = demo_app();
        app.join_token = Some("0123456789abcdef0123".to_owned());
        assert!(!text(&render(&app, 100, 40)).contains("0123456789abcdef0123"));
        key(&mut app, KeyCode::Char('?'));
        let help = text(&render(&app, 100, 40));
        assert!(
            help.contains("new Pis join with join_token = \"0123456789abcdef0123\""),
            "{help}"
        );
    }

    #[test]
    fn kill_asks_first() {
        let mut app = demo_app();
        key(&mut app, KeyCode::Right);
        key(&mut app, KeyCode::Right);
        assert_eq!(key(&mut app, KeyCode::Char('x')), None);
        assert_screen!("confirm_kill_80x24", render(&app, 80, 24));
    }

    #[test]
    fn a_lost_master_is_announced() {
        let mut app = demo_app();
        app.handle(Message::Feed(Update::Lost {
            resource: Resource::Pods,
            error: "cannot reach the API server at 10.99.0.1:6443: connection refused".into(),
        }));
        let later = app.now + Duration::from_secs(12);
        app.set_clock(later, app.wall);
        assert_screen!("master_lost_80x24", render(&app, 80, 24));
    }

    #[test]
    fn a_refused_feed_is_explained_not_called_lost() {
        let mut app = demo_app();
        app.handle(Message::Feed(Update::Refused {
            resource: Resource::Nodes,
            message: "nodes is forbidden: User \"alice\" cannot list resource \"nodes\" in API \
                      group \"\" at the cluster scope"
                .into(),
        }));
        assert!(app.lost.is_none(), "the server answered");
        let screen = text(&render(&app, 200, 24));
        assert!(
            screen.contains("not allowed: nodes is forbidden: User \"alice\" cannot list"),
            "{screen}"
        );
        assert!(!screen.contains("unreachable"), "{screen}");
        app.handle(Message::Feed(Update::whole_list(
            Resource::Nodes,
            Vec::new(),
        )));
        assert!(
            app.refused.is_empty(),
            "a list that succeeds clears the refusal"
        );
    }

    #[test]
    fn plain_terminals_get_ascii_and_no_colour() {
        let mut app = demo_app();
        app.look = Look {
            colours: Colours::None,
            unicode: false,
        };
        let buffer = render(&app, 80, 24);
        assert!(buffer
            .content
            .iter()
            .all(|cell| cell.fg == Color::Reset && cell.symbol().is_ascii()));
        assert_screen!("ascii_80x24", buffer);
    }

    #[test]
    fn a_hundred_nodes_scroll() {
        let mut app = demo_app();
        let nodes = (1..=100)
            .map(|i| node(&format!("sim-{i}"), &format!("10.99.1.{i}"), "True"))
            .collect();
        let pods = (0..3000)
            .map(|i| {
                let node = format!("sim-{}", i % 100 + 1);
                let owner = ("Deployment", ["web", "db", "cache", "api"][i % 4]);
                pod(&format!("p-{i}"), owner, Some(&node), "Running")
            })
            .collect();
        for (resource, items) in [(Resource::Nodes, nodes), (Resource::Pods, pods)] {
            app.handle(Message::Feed(Update::whole_list(resource, items)));
        }
        app.set_clock(app.now + Duration::from_secs(10), app.wall);
        for _ in 0..42 {
            key(&mut app, KeyCode::Right);
        }
        assert_screen!("hundred_nodes_160x48", render(&app, 160, 48));
    }

    #[test]
    fn new_pods_pulse_and_killed_nodes_are_red() {
        let mut app = demo_app();
        let arrived = pod(
            "web-5d8f7c-newpd",
            ("Deployment", "web"),
            Some("pi-1"),
            "Running",
        );
        app.handle(Message::Feed(Update::Changed {
            resource: Resource::Pods,
            kind: protocol::client::WatchKind::Added,
            object: arrived,
        }));
        let buffer = render(&app, 80, 24);
        let screen = text(&buffer);
        let row = screen
            .lines()
            .position(|l| l.contains("web-5d8f7c-newpd"))
            .unwrap();
        let column = screen
            .lines()
            .nth(row)
            .unwrap()
            .find("● web-5d8f7c-newpd")
            .unwrap();
        let column = screen.lines().nth(row).unwrap()[..column].chars().count() as u16;
        let cell = &buffer[(column + 2, row as u16)];
        assert!(cell.modifier.contains(Modifier::REVERSED), "{cell:?}");
        let later = app.now + crate::cluster::PULSE;
        app.set_clock(later, app.wall);
        let cell = &render(&app, 80, 24)[(column + 2, row as u16)];
        assert!(!cell.modifier.contains(Modifier::REVERSED), "{cell:?}");
        // pi-2's "killed" is red.
        let row = screen.lines().position(|l| l.contains("killed")).unwrap();
        let top = screen.lines().nth(row).unwrap();
        let killed = top[..top.find("killed").unwrap()].chars().count() as u16;
        assert_eq!(buffer[(killed, row as u16)].fg, Color::Rgb(255, 0, 0));
    }
}
