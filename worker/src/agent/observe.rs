//! What the model sees of a page: one `DOMSnapshot.captureSnapshot` call (every node
//! with its attributes, input values, whether it has a click listener, and the rendered
//! layout with its text and computed styles) and one `Page.getLayoutMetrics`, turned
//! into a compact text in two linear passes. No JavaScript runs per element.
//!
//! The text interleaves, in document order, the visible text and the interactive
//! elements (links, buttons, inputs, selects, text areas, elements with an ARIA widget
//! role, `contenteditable`, a `tabindex`, a click listener, or a pointer cursor), each
//! under an index: `[3]<button>Sign in</button>`. An element keeps its index for as
//! long as it exists (indices are keyed by Chromium's backend node id), and one that
//! was not there at the previous look is marked `*[7]`. Only what lies in the viewport
//! and `agent.lookahead_viewports` below it is shown, with a count of what is above and
//! below; secrets' values are replaced by their placeholders.
//!
//! Each element gets a concrete CSS selector (a unique id, a unique `name`, or an
//! `:nth-of-type` path from the nearest unique id), so that an action on `[3]` runs
//! as a script step on that selector and is recorded as one. Elements of same-origin
//! frames and open shadow roots are listed where they stand, their selectors going
//! through the frame or the host (`iframe#pay >>> #card`, `x-login >>> input`, the
//! steps' deep selectors); frames of other origins are counted, not shown (a page
//! script cannot reach into them), and closed shadow roots are not listed.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use operator_config::AgentSettings;
use operator_domain::agent::mask_secrets;
use operator_domain::error::CodedError;
use operator_domain::steps::DEEP_SEPARATOR;
use serde::Deserialize;
use serde_json::json;

use crate::session::Session;

/// What one look at the page found.
#[derive(Debug, Clone)]
pub struct Observation {
    pub url: String,
    pub title: String,
    /// The text shown to the model (header, then elements and text in page order).
    pub text: String,
    pub elements: Vec<Element>,
    /// Changes when what the model sees changes (new markers aside).
    pub fingerprint: u64,
    /// Characters of plain text shown (not counting element lines).
    pub text_chars: usize,
    /// All the page's rendered text (masked), for `extract`.
    pub full_text: String,
    pub scroll_y: f64,
    pub viewport_height: f64,
    pub page_height: f64,
    /// How many interactive elements the page has in all (shown or not).
    pub interactive_total: usize,
    /// The DOM nodes of every document of the page (frames included).
    pub dom_nodes: usize,
    /// How long the look took: the snapshot, the layout metrics and building the text.
    pub took: std::time::Duration,
}

/// One interactive element the model may act on.
#[derive(Debug, Clone)]
pub struct Element {
    pub index: u32,
    pub backend_node_id: i64,
    pub tag: String,
    /// `type` of an input (`text`, `password`, `checkbox`, ...).
    pub input_type: Option<String>,
    pub selector: String,
    /// The accessible name (masked).
    pub name: String,
    pub is_new: bool,
    /// Document coordinates: x, y, width, height.
    pub bounds: [f64; 4],
    /// A select's options: text and value.
    pub options: Vec<(String, String)>,
}

impl Element {
    /// Whether text can be typed into it.
    pub fn is_text_field(&self) -> bool {
        match self.tag.as_str() {
            "textarea" => true,
            "input" => !matches!(
                self.input_type.as_deref(),
                Some(
                    "checkbox"
                        | "radio"
                        | "submit"
                        | "button"
                        | "reset"
                        | "file"
                        | "image"
                        | "range"
                        | "color"
                )
            ),
            _ => false,
        }
    }
}

/// Indices that stay with their elements across the looks of one task.
pub struct Observer {
    indices: HashMap<i64, u32>,
    next_index: u32,
    previous: HashSet<i64>,
    settings: AgentSettings,
}

/// Styles asked of the snapshot, in this order.
const STYLES: [&str; 4] = ["display", "visibility", "opacity", "cursor"];

const INTERACTIVE_ROLES: [&str; 17] = [
    "button",
    "link",
    "checkbox",
    "radio",
    "tab",
    "menuitem",
    "menuitemcheckbox",
    "menuitemradio",
    "option",
    "switch",
    "textbox",
    "combobox",
    "searchbox",
    "slider",
    "spinbutton",
    "listbox",
    "treeitem",
];

/// The most characters of one element's name.
const MAX_NAME_CHARS: usize = 80;
/// The most characters of all the page's text kept for `extract`.
const MAX_FULL_TEXT_CHARS: usize = 60_000;

impl Observer {
    pub fn new(settings: AgentSettings) -> Self {
        Self {
            indices: HashMap::new(),
            next_index: 1,
            previous: HashSet::new(),
            settings,
        }
    }

    /// Looks at the page as it is now.
    pub(crate) async fn observe(
        &mut self,
        session: &Session<'_>,
        secrets: &BTreeMap<String, String>,
    ) -> Result<Observation, CodedError> {
        let started = std::time::Instant::now();
        let snapshot: Snapshot = session
            .page
            .call(
                "DOMSnapshot.captureSnapshot",
                json!({"computedStyles": STYLES, "includeDOMRects": false}),
            )
            .await
            .map_err(|error| session.handle.classify(&error, "cannot read the page"))?;
        let metrics: LayoutMetrics = session
            .page
            .call("Page.getLayoutMetrics", json!({}))
            .await
            .map_err(|error| session.handle.classify(&error, "cannot measure the page"))?;
        // The snapshot's `optionSelected` is the markup's choice, not the live one: one
        // call reads every select's chosen values, in document order.
        let chosen = session
            .evaluate_json(
                "Array.from(document.querySelectorAll('select'), (select) => Array.from(select.selectedOptions, (option) => option.value))",
            )
            .await?;
        let chosen: Vec<Vec<String>> = serde_json::from_value(chosen).unwrap_or_default();
        let mut observation = self.build(&snapshot, &metrics, &chosen, secrets);
        observation.took = started.elapsed();
        Ok(observation)
    }

    fn build(
        &mut self,
        snapshot: &Snapshot,
        metrics: &LayoutMetrics,
        chosen: &[Vec<String>],
        secrets: &BTreeMap<String, String>,
    ) -> Observation {
        let strings = &snapshot.strings;
        let Some(document) = snapshot.documents.first() else {
            return Observation::empty();
        };
        let viewport_top = metrics.css_layout_viewport.page_y;
        let viewport_height = metrics.css_layout_viewport.client_height.max(1.0);
        let page_height = metrics.css_content_size.height;
        let mut walk = Walk {
            viewport_top,
            window_bottom: viewport_top
                + viewport_height * (1.0 + self.settings.lookahead_viewports),
            secrets,
            shown: Vec::new(),
            seen_now: HashSet::new(),
            lines: Vec::new(),
            text_chars: 0,
            above: 0,
            below: 0,
            interactive_total: 0,
            full_text: String::new(),
            last_text_y: None,
            current_line: String::new(),
            unreadable_frames: 0,
        };
        let tree = Tree::new(document, strings, chosen);
        self.walk(snapshot, &tree, &mut walk, 0);
        walk.flush();
        let Walk {
            shown,
            seen_now,
            lines,
            text_chars,
            above,
            below,
            interactive_total,
            full_text,
            unreadable_frames,
            ..
        } = walk;
        self.previous = seen_now;

        let url = tree.string(document.document_url).to_owned();
        let title = tree.string(document.title).to_owned();
        let body = mask_secrets(&lines.join("\n"), secrets);
        let mut fingerprint = DefaultHasher::new();
        url.hash(&mut fingerprint);
        body.replace("*[", "[").hash(&mut fingerprint);
        let mut header = format!(
            "Page: {} ({})\nScrolled to {:.0} px of a {:.0} px page; the viewport is {:.0} px high.",
            if title.is_empty() { "untitled" } else { &title },
            url,
            viewport_top,
            page_height,
            viewport_height
        );
        if above > 0 || below > 0 {
            header.push_str(&format!(
                "\nInteractive elements not shown: {above} above, {below} below (scroll to see them)."
            ));
        }
        if unreadable_frames > 0 {
            header.push_str(&format!(
                "\nThe page has {unreadable_frames} frames from other sites whose content is not shown."
            ));
        }
        let text = if body.is_empty() {
            format!("{header}\n(The visible part of the page is empty.)")
        } else {
            format!("{header}\n\n{body}")
        };
        Observation {
            url,
            title,
            text,
            elements: shown,
            fingerprint: fingerprint.finish(),
            text_chars,
            full_text: mask_secrets(full_text.trim_end(), secrets),
            scroll_y: viewport_top,
            viewport_height,
            page_height,
            interactive_total,
            dom_nodes: snapshot
                .documents
                .iter()
                .map(|document| document.nodes.node_name.len())
                .sum(),
            took: std::time::Duration::ZERO,
        }
    }

    /// One document's nodes in order, into `walk`; a same-origin frame's document is
    /// walked where its frame element stands, its elements' selectors going through the
    /// frame (`iframe#pay >>> button`) and their bounds moved to the page's.
    fn walk(&mut self, snapshot: &Snapshot, tree: &Tree<'_>, walk: &mut Walk<'_>, depth: usize) {
        let secrets = walk.secrets;
        for node in 0..tree.len() {
            if tree.is_text(node) {
                let Some(text) = tree.rendered_text(node) else {
                    continue;
                };
                let text = collapse_whitespace(text);
                if text.is_empty() {
                    continue;
                }
                if walk.full_text.len() < MAX_FULL_TEXT_CHARS {
                    walk.full_text.push_str(&text);
                    walk.full_text.push(' ');
                }
                // Text that names an element is shown as its name, not twice.
                if tree.collector[node].is_some_and(|owner| tree.interactive[owner]) {
                    continue;
                }
                let Some(bounds) = tree.bounds(node) else {
                    continue;
                };
                if bounds[1] + bounds[3] < walk.viewport_top || bounds[1] > walk.window_bottom {
                    continue;
                }
                if walk.text_chars >= self.settings.max_text_chars {
                    continue;
                }
                if walk
                    .last_text_y
                    .is_some_and(|y| (y - bounds[1]).abs() > 4.0)
                {
                    walk.flush();
                }
                walk.last_text_y = Some(bounds[1]);
                let room = self.settings.max_text_chars - walk.text_chars;
                let piece: String = text.chars().take(room).collect();
                walk.text_chars += piece.chars().count();
                if !walk.current_line.is_empty() {
                    walk.current_line.push(' ');
                }
                walk.current_line.push_str(&piece);
                continue;
            }
            if let Some(frame) = tree.content_document(node) {
                self.enter_frame(snapshot, tree, node, frame, walk, depth);
                continue;
            }
            if !tree.interactive[node] {
                continue;
            }
            let Some(bounds) = tree.visible_bounds(node) else {
                continue;
            };
            walk.interactive_total += 1;
            if bounds[1] + bounds[3] < walk.viewport_top {
                walk.above += 1;
                continue;
            }
            if bounds[1] > walk.window_bottom || walk.shown.len() >= self.settings.max_elements {
                walk.below += 1;
                continue;
            }
            walk.flush();
            walk.last_text_y = None;
            let backend_node_id = tree.backend_node_id(node);
            let index = match self.indices.get(&backend_node_id) {
                Some(index) => *index,
                None => {
                    let index = self.next_index;
                    self.next_index += 1;
                    self.indices.insert(backend_node_id, index);
                    index
                }
            };
            let is_new = !self.previous.is_empty() && !self.previous.contains(&backend_node_id);
            walk.seen_now.insert(backend_node_id);
            let name = mask_secrets(&tree.name(node), secrets);
            let element = Element {
                index,
                backend_node_id,
                tag: tree.tag_lower(node),
                input_type: tree.input_type(node),
                selector: tree.selector(node),
                name,
                is_new,
                bounds,
                options: tree
                    .options
                    .get(&node)
                    .map(|options| {
                        options
                            .iter()
                            .map(|(text, value, _)| (text.clone(), value.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            walk.lines
                .push(mask_secrets(&tree.describe(node, &element), secrets));
            walk.shown.push(element);
        }
    }

    /// Walks the document of frame element `host` (snapshot document `frame`), if a
    /// selector can reach into it: a visible frame of the same origin, not too deep.
    fn enter_frame(
        &mut self,
        snapshot: &Snapshot,
        tree: &Tree<'_>,
        host: usize,
        frame: usize,
        walk: &mut Walk<'_>,
        depth: usize,
    ) {
        let Some(document) = snapshot.documents.get(frame) else {
            return;
        };
        let Some(host_bounds) = tree.visible_bounds(host) else {
            return;
        };
        let frame_url = tree.string(document.document_url);
        if depth >= MAX_FRAME_DEPTH || !same_origin(tree.document_url(), frame_url) {
            walk.unreadable_frames += 1;
            return;
        }
        let mut inner = Tree::new(document, &snapshot.strings, &[]);
        // The frame's content box: its element's box less its border, which the
        // snapshot does not give; estimated from the content's width.
        let content_width = inner.root_width().unwrap_or(host_bounds[2]);
        let border = ((host_bounds[2] - content_width) / 2.0).max(0.0);
        inner.offset = (host_bounds[0] + border, host_bounds[1] + border);
        inner.prefix = format!("{}{DEEP_SEPARATOR}", tree.selector(host));
        walk.flush();
        walk.last_text_y = None;
        self.walk(snapshot, &inner, walk, depth + 1);
        walk.flush();
        walk.last_text_y = None;
    }
}

/// How deep frames inside frames are shown.
const MAX_FRAME_DEPTH: usize = 3;

/// Whether a frame's document shares the page's origin (so a page script, and a
/// selector, can reach into it). `about:srcdoc` and `about:blank` frames inherit it.
fn same_origin(page: &str, frame: &str) -> bool {
    if frame.starts_with("about:") {
        return true;
    }
    match (url::Url::parse(page), url::Url::parse(frame)) {
        (Ok(page), Ok(frame)) => page.origin() == frame.origin(),
        _ => false,
    }
}

/// What one look collects as it walks the page's documents.
struct Walk<'s> {
    viewport_top: f64,
    window_bottom: f64,
    secrets: &'s BTreeMap<String, String>,
    shown: Vec<Element>,
    seen_now: HashSet<i64>,
    lines: Vec<String>,
    text_chars: usize,
    above: usize,
    below: usize,
    interactive_total: usize,
    full_text: String,
    last_text_y: Option<f64>,
    current_line: String,
    /// Frames whose content cannot be shown (another origin, or too deep).
    unreadable_frames: usize,
}

impl Walk<'_> {
    /// Ends the line of text being gathered.
    fn flush(&mut self) {
        let trimmed = self.current_line.trim();
        if !trimmed.is_empty() {
            self.lines.push(trimmed.to_owned());
        }
        self.current_line.clear();
    }
}

impl Observation {
    fn empty() -> Self {
        Self {
            url: String::new(),
            title: String::new(),
            text: "(The page has no document.)".to_owned(),
            elements: Vec::new(),
            fingerprint: 0,
            text_chars: 0,
            full_text: String::new(),
            scroll_y: 0.0,
            viewport_height: 0.0,
            page_height: 0.0,
            interactive_total: 0,
            dom_nodes: 0,
            took: std::time::Duration::ZERO,
        }
    }

    pub fn element(&self, index: u32) -> Option<&Element> {
        self.elements.iter().find(|element| element.index == index)
    }
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max).collect();
    cut.push('…');
    cut
}

/// A CSS string literal's content.
fn css_string(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

fn is_plain_identifier(text: &str) -> bool {
    let mut characters = text.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && characters
            .all(|character| character.is_ascii_alphanumeric() || matches!(character, '_' | '-'))
}

/// The main document of a snapshot, indexed for the two passes.
struct Tree<'a> {
    nodes: &'a NodeTree,
    strings: &'a [String],
    /// Node → its layout node, when rendered.
    layout_of: Vec<Option<usize>>,
    layout: &'a LayoutTree,
    /// Node → its attributes, for element nodes.
    attributes: Vec<HashMap<&'a str, &'a str>>,
    interactive: Vec<bool>,
    /// Node → the nearest element (itself or an ancestor) whose text names it: an
    /// interactive element, a label or an option.
    collector: Vec<Option<usize>>,
    /// Collector → the text and `alt`s inside it.
    collected: HashMap<usize, String>,
    /// Whether the node is inside a shadow root or a template (no selector reaches it).
    unreachable: Vec<bool>,
    nth_of_type: Vec<usize>,
    id_counts: HashMap<&'a str, usize>,
    /// Id → the first element with it (for `aria-labelledby`).
    id_nodes: HashMap<&'a str, usize>,
    name_counts: HashMap<(&'a str, &'a str), usize>,
    /// `for` of a label → its text; filled after the first pass.
    labels_for: HashMap<String, String>,
    /// Node → the nearest `label` ancestor.
    label_ancestor: Vec<Option<usize>>,
    /// Select → its options (text, value, selected).
    options: HashMap<usize, Vec<(String, String, bool)>>,
    clickable: HashSet<usize>,
    checked: HashSet<usize>,
    input_values: HashMap<usize, usize>,
    /// The document's URL.
    url: &'a str,
    /// Frame element → the snapshot document it holds.
    content_documents: HashMap<usize, usize>,
    /// Node → its shadow root's mode (`open`, `closed`, `user-agent`), for the nodes
    /// of shadow trees (the snapshot lists them as the host's children).
    shadow: HashMap<usize, &'a str>,
    /// Node → the host of the open shadow root whose tree it is in (none in the light
    /// tree): its selector goes through the host (`x-card >>> input`).
    scope_host: Vec<Option<usize>>,
    /// Where this document's origin is in the page (a frame's content box).
    offset: (f64, f64),
    /// What each selector starts with: the way into this frame's document.
    prefix: String,
}

impl<'a> Tree<'a> {
    fn new(document: &'a DocumentSnapshot, strings: &'a [String], chosen: &[Vec<String>]) -> Self {
        let nodes = &document.nodes;
        let count = nodes.node_name.len();
        let mut layout_of = vec![None; count];
        for (layout_index, node) in document.layout.node_index.iter().enumerate() {
            if let Some(slot) = usize::try_from(*node)
                .ok()
                .and_then(|node| layout_of.get_mut(node))
                && slot.is_none()
            {
                *slot = Some(layout_index);
            }
        }
        let string = |index: i64| -> &'a str {
            usize::try_from(index)
                .ok()
                .and_then(|index| strings.get(index))
                .map_or("", String::as_str)
        };
        let attributes: Vec<HashMap<&str, &str>> = (0..count)
            .map(|node| {
                nodes
                    .attributes
                    .get(node)
                    .map(|pairs| {
                        pairs
                            .chunks(2)
                            .filter(|pair| pair.len() == 2)
                            .map(|pair| (string(pair[0]), string(pair[1])))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        let rare_set = |data: &Option<RareBoolean>| -> HashSet<usize> {
            data.as_ref()
                .map(|data| {
                    data.index
                        .iter()
                        .filter_map(|index| usize::try_from(*index).ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let input_values = rare_pairs(&nodes.input_value);
        let mut tree = Self {
            nodes,
            strings,
            layout_of,
            layout: &document.layout,
            attributes,
            interactive: vec![false; count],
            collector: vec![None; count],
            collected: HashMap::new(),
            unreachable: vec![false; count],
            nth_of_type: vec![1; count],
            id_counts: HashMap::new(),
            id_nodes: HashMap::new(),
            name_counts: HashMap::new(),
            labels_for: HashMap::new(),
            label_ancestor: vec![None; count],
            options: HashMap::new(),
            clickable: rare_set(&nodes.is_clickable),
            checked: rare_set(&nodes.input_checked),
            input_values,
            url: string(document.document_url),
            content_documents: rare_pairs(&nodes.content_document_index),
            shadow: nodes
                .shadow_root_type
                .as_ref()
                .map(|data| {
                    data.index
                        .iter()
                        .zip(&data.value)
                        .filter_map(|(node, mode)| {
                            Some((usize::try_from(*node).ok()?, string(*mode)))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            scope_host: vec![None; count],
            offset: (0.0, 0.0),
            prefix: String::new(),
        };
        tree.first_pass(&rare_set(&nodes.option_selected));
        // The live choice, where the page answered for every select.
        let selects: Vec<usize> = (0..tree.len())
            .filter(|node| {
                tree.is_element(*node)
                    && !tree.unreachable[*node]
                    && tree.tag_lower(*node) == "select"
            })
            .collect();
        if selects.len() == chosen.len() {
            for (select, values) in selects.into_iter().zip(chosen) {
                if let Some(options) = tree.options.get_mut(&select) {
                    for (_, value, selected) in options.iter_mut() {
                        *selected = values.contains(value);
                    }
                }
            }
        }
        tree
    }

    fn len(&self) -> usize {
        self.nodes.node_name.len()
    }

    fn document_url(&self) -> &'a str {
        self.url
    }

    /// The snapshot document a frame element holds.
    fn content_document(&self, node: usize) -> Option<usize> {
        self.content_documents.get(&node).copied()
    }

    /// The width of the document's root element, as laid out.
    fn root_width(&self) -> Option<f64> {
        let root =
            (0..self.len()).find(|node| self.is_element(*node) && self.tag(*node) == "HTML")?;
        let layout_index = self.layout_of[root]?;
        self.layout
            .bounds
            .get(layout_index)
            .and_then(|bounds| bounds.get(2))
            .copied()
    }

    /// Whether the node is the top of a shadow tree (its parent is the host).
    fn is_shadow_top(&self, node: usize) -> bool {
        self.shadow.contains_key(&node)
            && self
                .parent(node)
                .is_none_or(|parent| !self.shadow.contains_key(&parent))
    }

    fn string(&self, index: i64) -> &'a str {
        usize::try_from(index)
            .ok()
            .and_then(|index| self.strings.get(index))
            .map_or("", String::as_str)
    }

    fn parent(&self, node: usize) -> Option<usize> {
        let parent = usize::try_from(*self.nodes.parent_index.get(node)?).ok()?;
        // Snapshot nodes come in document order: a parent precedes its children.
        (parent < node).then_some(parent)
    }

    fn is_text(&self, node: usize) -> bool {
        self.nodes.node_type.get(node) == Some(&3)
    }

    fn is_element(&self, node: usize) -> bool {
        self.nodes.node_type.get(node) == Some(&1)
    }

    fn tag(&self, node: usize) -> &'a str {
        self.string(self.nodes.node_name[node])
    }

    fn tag_lower(&self, node: usize) -> String {
        self.tag(node).to_ascii_lowercase()
    }

    fn attribute(&self, node: usize, name: &str) -> Option<&'a str> {
        self.attributes[node].get(name).copied()
    }

    fn backend_node_id(&self, node: usize) -> i64 {
        self.nodes.backend_node_id.get(node).copied().unwrap_or(-1)
    }

    fn input_type(&self, node: usize) -> Option<String> {
        (self.tag_lower(node) == "input").then(|| {
            self.attribute(node, "type")
                .unwrap_or("text")
                .to_ascii_lowercase()
        })
    }

    fn style(&self, layout_index: usize, which: usize) -> &'a str {
        self.layout
            .styles
            .get(layout_index)
            .and_then(|styles| styles.get(which))
            .map_or("", |index| self.string(*index))
    }

    /// The node's box in the page (a frame's document's moved by the frame's offset).
    fn bounds(&self, node: usize) -> Option<[f64; 4]> {
        let layout_index = self.layout_of[node]?;
        let bounds = self.layout.bounds.get(layout_index)?;
        (bounds.len() == 4).then(|| {
            [
                bounds[0] + self.offset.0,
                bounds[1] + self.offset.1,
                bounds[2],
                bounds[3],
            ]
        })
    }

    /// The bounds of a rendered, visible element of non-zero size.
    fn visible_bounds(&self, node: usize) -> Option<[f64; 4]> {
        let layout_index = self.layout_of[node]?;
        let bounds = self.bounds(node)?;
        let hidden = self.style(layout_index, 0) == "none"
            || matches!(self.style(layout_index, 1), "hidden" | "collapse")
            || self.style(layout_index, 2) == "0";
        (!hidden && bounds[2] > 0.0 && bounds[3] > 0.0).then_some(bounds)
    }

    fn rendered_text(&self, node: usize) -> Option<&'a str> {
        let layout_index = self.layout_of[node]?;
        let text = self.string(*self.layout.text.get(layout_index)?);
        if text.is_empty() {
            Some(self.string(*self.nodes.node_value.get(node)?))
        } else {
            Some(text)
        }
    }

    fn has_pointer_cursor(&self, node: usize) -> bool {
        self.layout_of[node].is_some_and(|layout_index| self.style(layout_index, 3) == "pointer")
    }

    /// Whether an element is one the model may act on (before collapsing into an
    /// interactive ancestor).
    fn is_interactive_element(&self, node: usize, tag: &str) -> bool {
        match tag {
            "html" | "body" => return false,
            // A label for a listed control: the control is what is acted on.
            "label" if self.attribute(node, "for").is_some() => return false,
            "button" | "select" | "textarea" | "summary" => return true,
            "input" => {
                return self
                    .attribute(node, "type")
                    .is_none_or(|kind| !kind.eq_ignore_ascii_case("hidden"));
            }
            "a" if self.attribute(node, "href").is_some() => return true,
            _ => {}
        }
        if let Some(role) = self.attribute(node, "role")
            && INTERACTIVE_ROLES.contains(&role.to_ascii_lowercase().as_str())
        {
            return true;
        }
        if self
            .attribute(node, "contenteditable")
            .is_some_and(|value| value.is_empty() || value.eq_ignore_ascii_case("true"))
        {
            return true;
        }
        if self.attribute(node, "onclick").is_some() || self.clickable.contains(&node) {
            return true;
        }
        if self
            .attribute(node, "tabindex")
            .and_then(|value| value.trim().parse::<i32>().ok())
            .is_some_and(|value| value >= 0)
        {
            return true;
        }
        // A pointer cursor is inherited: only where it starts counts.
        self.has_pointer_cursor(node)
            && self
                .parent(node)
                .is_none_or(|parent| !self.has_pointer_cursor(parent))
    }

    fn first_pass(&mut self, selected_options: &HashSet<usize>) {
        let mut type_counts: HashMap<(usize, bool, String), usize> = HashMap::new();
        let mut option_parent: Vec<(usize, usize)> = Vec::new();
        for node in 0..self.len() {
            let parent = self.parent(node);
            let node_type = self.nodes.node_type.get(node).copied().unwrap_or(0);
            // A closed or user-agent shadow root is out of a page script's reach.
            let sealed_shadow = self.shadow.get(&node).is_some_and(|mode| *mode != "open");
            self.unreachable[node] = parent.is_some_and(|parent| {
                self.unreachable[parent]
                    || self.nodes.node_type.get(parent) == Some(&11)
                    || self.tag_lower(parent) == "template"
            }) || node_type == 11
                || sealed_shadow;
            self.scope_host[node] = if self.is_shadow_top(node) {
                parent
            } else {
                parent.and_then(|parent| self.scope_host[parent])
            };
            let inherited = parent.and_then(|parent| self.collector[parent]);
            self.label_ancestor[node] = parent.and_then(|parent| {
                if self.is_element(parent) && self.tag_lower(parent) == "label" {
                    Some(parent)
                } else {
                    self.label_ancestor[parent]
                }
            });
            if self.is_text(node) {
                self.collector[node] = inherited;
                // Names come from the DOM's text, rendered or not (a closed select's
                // options have no layout).
                let text = self
                    .rendered_text(node)
                    .or_else(|| Some(self.string(*self.nodes.node_value.get(node)?)));
                if let (Some(owner), Some(text)) = (inherited, text) {
                    let entry = self.collected.entry(owner).or_default();
                    entry.push(' ');
                    entry.push_str(text);
                }
                continue;
            }
            if !self.is_element(node) {
                self.collector[node] = inherited;
                continue;
            }
            let tag = self.tag_lower(node);
            if let Some(parent) = parent {
                // A host's shadow children and its light children are siblings of two
                // different trees.
                let count = type_counts
                    .entry((parent, self.is_shadow_top(node), tag.clone()))
                    .or_default();
                *count += 1;
                self.nth_of_type[node] = *count;
            }
            if let Some(id) = self.attribute(node, "id") {
                *self.id_counts.entry(id).or_default() += 1;
                self.id_nodes.entry(id).or_insert(node);
            }
            if let Some(name) = self.attribute(node, "name") {
                *self.name_counts.entry((self.tag(node), name)).or_default() += 1;
            }
            if tag == "img"
                && let (Some(owner), Some(alt)) = (inherited, self.attribute(node, "alt"))
            {
                let entry = self.collected.entry(owner).or_default();
                entry.push(' ');
                entry.push_str(alt);
            }
            let owner_is_interactive = inherited.is_some_and(|owner| self.interactive[owner]);
            let form_control = matches!(
                tag.as_str(),
                "input" | "select" | "textarea" | "button" | "a"
            );
            let interactive = !self.unreachable[node]
                && self.is_interactive_element(node, &tag)
                && (!owner_is_interactive || form_control);
            self.interactive[node] = interactive;
            if tag == "option" {
                let select = self.ancestor_select(node);
                if let Some(select) = select {
                    option_parent.push((node, select));
                }
            }
            self.collector[node] = if interactive || tag == "label" || tag == "option" {
                Some(node)
            } else {
                inherited
            };
        }
        for (option, select) in option_parent {
            let text = collapse_whitespace(self.collected.get(&option).map_or("", String::as_str));
            let value = self
                .attribute(option, "value")
                .map_or_else(|| text.clone(), str::to_owned);
            let text = if text.is_empty() { value.clone() } else { text };
            self.options.entry(select).or_default().push((
                text,
                value,
                selected_options.contains(&option),
            ));
        }
        let labels: Vec<(String, String)> = (0..self.len())
            .filter(|node| self.is_element(*node) && self.tag_lower(*node) == "label")
            .filter_map(|node| {
                let target = self.attribute(node, "for")?;
                Some((
                    target.to_owned(),
                    collapse_whitespace(self.collected.get(&node).map_or("", String::as_str)),
                ))
            })
            .collect();
        self.labels_for.extend(labels);
    }

    fn ancestor_select(&self, node: usize) -> Option<usize> {
        let mut current = self.parent(node);
        while let Some(ancestor) = current {
            if self.tag_lower(ancestor) == "select" {
                return Some(ancestor);
            }
            current = self.parent(ancestor);
        }
        None
    }

    /// The accessible name, roughly as the accessibility tree computes it.
    fn name(&self, node: usize) -> String {
        let own_text = || collapse_whitespace(self.collected.get(&node).map_or("", String::as_str));
        let candidates = [
            self.attribute(node, "aria-label").map(str::to_owned),
            self.attribute(node, "aria-labelledby").map(|ids| {
                ids.split_whitespace()
                    .filter_map(|id| {
                        self.id_nodes.get(id).map(|other| {
                            collapse_whitespace(
                                self.collected.get(other).map_or("", String::as_str),
                            )
                        })
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            }),
            self.attribute(node, "id")
                .and_then(|id| self.labels_for.get(id).cloned()),
            self.label_ancestor[node].map(|label| {
                collapse_whitespace(self.collected.get(&label).map_or("", String::as_str))
            }),
            (self.tag_lower(node) != "select").then(own_text),
            self.attribute(node, "title").map(str::to_owned),
            self.attribute(node, "alt").map(str::to_owned),
        ];
        let name = candidates
            .into_iter()
            .flatten()
            .map(|text| collapse_whitespace(&text))
            .find(|text| !text.is_empty())
            .unwrap_or_default();
        truncate(&name, MAX_NAME_CHARS)
    }

    /// The element as the model sees it: `[3]<button>Sign in</button>`.
    fn describe(&self, node: usize, element: &Element) -> String {
        let tag = self.tag_lower(node);
        let mut attributes = Vec::new();
        if let Some(kind) = &element.input_type
            && kind != "text"
        {
            attributes.push(format!("type={kind}"));
        }
        if let Some(role) = self.attribute(node, "role") {
            attributes.push(format!("role={role}"));
        }
        for name in ["name", "placeholder", "aria-expanded"] {
            if let Some(value) = self.attribute(node, name).filter(|value| !value.is_empty()) {
                attributes.push(format!("{name}=\"{}\"", truncate(value, 40)));
            }
        }
        if tag == "a"
            && let Some(href) = self.attribute(node, "href")
        {
            attributes.push(format!("href=\"{}\"", truncate(href, 80)));
        }
        if matches!(element.input_type.as_deref(), Some("checkbox" | "radio")) {
            attributes.push(
                if self.checked.contains(&node) {
                    "checked"
                } else {
                    "unchecked"
                }
                .to_owned(),
            );
        } else if let Some(value) = self
            .input_values
            .get(&node)
            .and_then(|value| self.strings.get(*value))
        {
            attributes.push(format!("value=\"{}\"", truncate(value, 60)));
        }
        let marker = if element.is_new { "*" } else { "" };
        let opening = if attributes.is_empty() {
            format!("<{tag}>")
        } else {
            format!("<{tag} {}>", attributes.join(" "))
        };
        let content = if tag == "select" {
            self.options
                .get(&node)
                .map(|options| {
                    let shown: Vec<String> = options
                        .iter()
                        .take(12)
                        .map(|(text, _, selected)| {
                            if *selected {
                                format!("{text} (selected)")
                            } else {
                                text.clone()
                            }
                        })
                        .collect();
                    let more = options.len().saturating_sub(12);
                    if more > 0 {
                        format!("{} | … {more} more", shown.join(" | "))
                    } else {
                        shown.join(" | ")
                    }
                })
                .unwrap_or_default()
        } else {
            element.name.clone()
        };
        if tag == "input" && content.is_empty() {
            return format!("{marker}[{}]{opening}", element.index);
        }
        if tag == "input" {
            return format!("{marker}[{}]{opening} {content}", element.index);
        }
        format!("{marker}[{}]{opening}{content}</{tag}>", element.index)
    }

    /// A CSS selector matching this element alone: a unique id, a unique name, or a
    /// path of `:nth-of-type` steps from the nearest element with a unique id.
    fn selector(&self, node: usize) -> String {
        let scope = match self.scope_host[node] {
            Some(host) => format!("{}{DEEP_SEPARATOR}", self.selector(host)),
            None => self.prefix.clone(),
        };
        format!("{scope}{}", self.local_selector(node))
    }

    /// [`Self::selector`] within the node's own document or shadow tree.
    fn local_selector(&self, node: usize) -> String {
        let tag = self.tag_lower(node);
        if let Some(id) = self.unique_id(node) {
            return format!("#{id}");
        }
        if let Some(name) = self.attribute(node, "name")
            && self.name_counts.get(&(self.tag(node), name)) == Some(&1)
        {
            return format!("{tag}[name=\"{}\"]", css_string(name));
        }
        let mut segments = Vec::new();
        let mut current = Some(node);
        while let Some(element) = current {
            if !self.is_element(element) {
                break;
            }
            let element_tag = self.tag_lower(element);
            if element != node
                && let Some(id) = self.unique_id(element)
            {
                segments.push(format!("#{id}"));
                break;
            }
            if element_tag == "html" {
                segments.push("html".to_owned());
                break;
            }
            segments.push(format!(
                "{element_tag}:nth-of-type({})",
                self.nth_of_type[element]
            ));
            if self.is_shadow_top(element) {
                // A child of the shadow root: the host is the way in.
                break;
            }
            current = self.parent(element);
        }
        segments.reverse();
        segments.join(" > ")
    }

    fn unique_id(&self, node: usize) -> Option<&'a str> {
        self.attribute(node, "id")
            .filter(|id| is_plain_identifier(id) && self.id_counts.get(id) == Some(&1))
    }
}

#[derive(Debug, Deserialize)]
struct Snapshot {
    documents: Vec<DocumentSnapshot>,
    strings: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DocumentSnapshot {
    #[serde(rename = "documentURL")]
    document_url: i64,
    title: i64,
    nodes: NodeTree,
    layout: LayoutTree,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeTree {
    #[serde(default)]
    parent_index: Vec<i64>,
    #[serde(default)]
    node_type: Vec<i64>,
    #[serde(default)]
    node_name: Vec<i64>,
    #[serde(default)]
    node_value: Vec<i64>,
    #[serde(default)]
    backend_node_id: Vec<i64>,
    #[serde(default)]
    attributes: Vec<Vec<i64>>,
    input_value: Option<RareString>,
    /// Integers, in the same shape as a rare string column.
    content_document_index: Option<RareString>,
    shadow_root_type: Option<RareString>,
    input_checked: Option<RareBoolean>,
    option_selected: Option<RareBoolean>,
    is_clickable: Option<RareBoolean>,
}

#[derive(Debug, Deserialize)]
struct RareString {
    index: Vec<i64>,
    value: Vec<i64>,
}

/// Node → the value a rare column gives it (a string table index, or an integer).
fn rare_pairs(data: &Option<RareString>) -> HashMap<usize, usize> {
    data.as_ref()
        .map(|data| {
            data.index
                .iter()
                .zip(&data.value)
                .filter_map(|(node, value)| {
                    Some((usize::try_from(*node).ok()?, usize::try_from(*value).ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Deserialize)]
struct RareBoolean {
    index: Vec<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutTree {
    #[serde(default)]
    node_index: Vec<i64>,
    #[serde(default)]
    styles: Vec<Vec<i64>>,
    #[serde(default)]
    bounds: Vec<Vec<f64>>,
    #[serde(default)]
    text: Vec<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutMetrics {
    css_layout_viewport: Viewport,
    css_content_size: ContentSize,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Viewport {
    page_y: f64,
    client_height: f64,
}

#[derive(Debug, Deserialize)]
struct ContentSize {
    height: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_frames_of_the_page_origin_are_entered() {
        let page = "http://127.0.0.1:8080/shop/framed";
        for (frame, entered) in [
            ("http://127.0.0.1:8080/shop/inner", true),
            ("about:srcdoc", true),
            ("about:blank", true),
            ("http://127.0.0.1:8081/shop/inner", false),
            ("https://127.0.0.1:8080/shop/inner", false),
            ("http://localhost:8080/shop/inner", false),
            ("not a url", false),
        ] {
            assert_eq!(same_origin(page, frame), entered, "{frame}");
        }
    }

    #[test]
    fn identifiers_that_need_no_escaping() {
        assert!(is_plain_identifier("submit"));
        assert!(is_plain_identifier("user-name_2"));
        assert!(!is_plain_identifier("2fa"));
        assert!(!is_plain_identifier("a.b"));
        assert!(!is_plain_identifier(""));
    }

    #[test]
    fn names_are_collapsed_and_cut() {
        assert_eq!(collapse_whitespace("  Sign \n in "), "Sign in");
        let long = "x".repeat(100);
        assert_eq!(truncate(&long, 10).chars().count(), 11);
        assert_eq!(css_string("a\"b"), "a\\\"b");
    }
}
