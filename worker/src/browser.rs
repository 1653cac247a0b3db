//! The Chromium pool: `browser.browsers` warm browsers per worker process (the worker's
//! concurrent tasks spread over them, each on the least busy), and a fresh browser
//! context per task.
//!
//! The pool launches Chromium itself and drives it over our own CDP connection
//! ([`crate::cdp`]): one WebSocket per browser, which every page shares through a
//! flattened session. headless_chrome did this before; its transport made each call wait
//! up to 100 ms to be sent (rust-headless-chrome issue #446), several times per task.
//!
//! The code that drives a page is async and runs on the task's own future, gated by a
//! semaphore sized to the worker's concurrency, so Chromium never sees more pages than
//! the worker runs tasks. Only what blocks by nature leaves the runtime's threads:
//! killing a browser's process tree (it waits for the processes to go) and reading its
//! memory from `/proc`.
//!
//! Each task gets its own browser context (an incognito profile: cookies, storage and
//! cache are not shared), disposed when the task ends, without waiting for Chromium to
//! finish. A few blank pages, each in a fresh context and ready for a task (request
//! interception, events, default viewport), are kept as spares, so a task does not wait
//! for a renderer to start.
//!
//! Crashes and hangs: a call unanswered within `browser.call_timeout`, a closed
//! connection or a dead process marks the browser broken; the next task gets a new one,
//! and the old one's whole process tree is killed and its profile removed. A keep-alive
//! ping finds a browser that died or hangs while the worker is idle. A browser is also
//! recycled after `browser.recycle_after` tasks or above `browser.recycle_above_mb` of
//! memory. Chromium is started from one long-lived thread with a parent-death signal,
//! so even a SIGKILL'd worker leaves no Chromium.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures::FutureExt;
use operator_config::{BrowserSettings, SandboxMode};
use operator_domain::Viewport;
use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::network::NetworkPolicy;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot};
use tracing::{debug, info, warn};

use crate::cdp::{CdpError, Connection, FailureLog, Page};
use crate::egress::{EgressProxy, RefusalLog};
use crate::guard::Interception;

/// Flags for a quiet, reproducible headless browser on a server. The list headless_chrome
/// used to add (itself taken from Puppeteer) is kept, with our additions.
///
/// Site isolation is off so that a cross-site iframe stays in its page's renderer and
/// its requests are paused by the page's request interception (the network guard); an
/// out-of-process iframe would be a separate target whose requests the guard never sees.
/// Chromium reads only the last `--disable-features`, so that list is one flag.
///
/// Left out on purpose: `--disable-popup-blocking` (a page could open new windows on its
/// own, and a new window is a target outside its page's request interception), and
/// `--ignore-certificate-errors` (a browser fetching other people's pages must check
/// their certificates).
const CHROMIUM_FLAGS: [&str; 32] = [
    // What the pool relies on: headless, the DevTools address on stderr (a free port),
    // no first-run UI.
    "--headless",
    "--remote-debugging-port=0",
    "--no-first-run",
    "--no-default-browser-check",
    // Without these Chromium keeps trying to reach Google's services (NOTES.md).
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-sync",
    "--disable-breakpad",
    "--disable-client-side-phishing-detection",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-component-extensions-with-background-pages",
    "--metrics-recording-only",
    "--no-pings",
    "--password-store=basic",
    "--use-mock-keychain",
    // Many pages at once, none in front: none may be throttled or reported as hung.
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--disable-ipc-flooding-protection",
    "--disable-hang-monitor",
    "--disable-prompt-on-repost",
    // Servers: containers have a small /dev/shm, and no GPU.
    "--disable-dev-shm-usage",
    "--disable-gpu",
    // The same pixels on every machine; no sound.
    "--force-color-profile=srgb",
    "--hide-scrollbars",
    "--mute-audio",
    "--enable-automation",
    "--disable-quic",
    "--disable-features=TranslateUI,BlinkGenPropertyTrees,IsolateOrigins,site-per-process",
    "--disable-site-isolation-trials",
];

/// How often, at most, a browser's memory is measured when a task takes it.
const MEMORY_CHECK_INTERVAL: Duration = Duration::from_secs(1);

const MIB: u64 = 1024 * 1024;

/// The browser window's size; pages get their own viewport (see [`viewport_params`]).
const WINDOW_SIZE: (u32, u32) = (1280, 800);

/// A launched browser and its connection.
pub struct BrowserHandle {
    connection: Arc<Connection>,
    process: BrowserProcess,
    /// The browser's own user agent, read once at launch: a task that sets a locale but
    /// no user agent keeps it (without "Headless").
    user_agent: String,
    /// Set when a call failed in a way that suggests the browser is gone; the next
    /// task gets a new browser.
    broken: AtomicBool,
    pub tasks_started: AtomicU64,
    /// When the browser's memory was last measured (see [`Self::over_memory_limit`]).
    memory_checked: Mutex<Option<Instant>>,
    /// A call that takes longer means a hung browser.
    call_timeout: Duration,
    /// Blank pages, each in its own never-used context, opened ahead of the tasks that
    /// will take them: opening and preparing a page takes several round trips and a new
    /// renderer, the largest part of a simple task. Held with their context's id, not a
    /// [`ContextGuard`], which would own the handle.
    spares: Mutex<Vec<(String, PageParts)>>,
    spare_target: usize,
    refilling: AtomicBool,
    /// The refusals of the egress proxy this browser goes through, if any.
    egress: Option<Arc<RefusalLog>>,
}

/// A page and its request interception.
pub struct PageParts {
    pub page: Page,
    pub interception: Interception,
}

/// A blank page in a fresh context, for one task.
pub struct PreparedPage {
    pub context: ContextGuard,
    pub page: Page,
    pub interception: Interception,
}

/// `Emulation.setDeviceMetricsOverride` for a viewport.
pub(crate) fn viewport_params(viewport: &Viewport) -> Value {
    json!({
        "width": viewport.width,
        "height": viewport.height,
        "deviceScaleFactor": viewport.device_scale_factor,
        "mobile": false,
    })
}

impl BrowserHandle {
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// The proportional set size of the browser's processes (the main one and all
    /// below it), in bytes: what replacing the browser would give back. Reads `/proc`
    /// (a few milliseconds), so it runs on the blocking pool.
    async fn memory_bytes(&self) -> u64 {
        let pid = self.process.pid;
        tokio::task::spawn_blocking(move || memory_bytes(pid))
            .await
            .unwrap_or(0)
    }

    /// Whether the browser holds more than `limit` bytes (0: no limit). Only a browser
    /// that has served a task is measured, so a new browser always gets one task and a
    /// limit below a bare browser's size replaces it every task rather than never
    /// serving; and at most once per [`MEMORY_CHECK_INTERVAL`], because reading /proc
    /// for every process costs a few milliseconds.
    async fn over_memory_limit(&self, limit: u64) -> bool {
        if limit == 0 || self.tasks_started.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let due = match self.memory_checked.lock() {
            Ok(mut checked) if !checked.is_some_and(|at| at.elapsed() < MEMORY_CHECK_INTERVAL) => {
                *checked = Some(Instant::now());
                true
            }
            _ => false,
        };
        if !due {
            return false;
        }
        let bytes = self.memory_bytes().await;
        if bytes <= limit {
            return false;
        }
        info!(
            pid = self.pid(),
            mib = bytes / MIB,
            limit_mib = limit / MIB,
            "the browser is above browser.recycle_above_mb"
        );
        true
    }

    pub fn user_agent(&self) -> &str {
        &self.user_agent
    }

    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }

    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// The egress proxy's refusals, when this browser goes through one.
    pub fn egress_refusals(&self) -> Option<Arc<RefusalLog>> {
        self.egress.clone()
    }

    /// Fails with a retryable `browser_crashed` when the browser process is gone or the
    /// browser was found hung; checked while a task waits, so a killed browser ends the
    /// task's attempt at once instead of at its deadline.
    pub fn check_alive(&self) -> Result<(), CodedError> {
        if self.is_usable() {
            return Ok(());
        }
        self.mark_broken();
        Err(CodedError::new(
            ErrorCode::BrowserCrashed,
            "the browser died or stopped answering",
        ))
    }

    fn is_usable(&self) -> bool {
        !self.broken.load(Ordering::SeqCst) && process_is_alive(self.process.pid)
    }

    /// A blank page in a fresh context: a spare if one is ready, else opened now.
    pub async fn take_page(self: &Arc<Self>) -> Result<PreparedPage, CodedError> {
        let spare = self.spares.lock().ok().and_then(|mut spares| spares.pop());
        let (context, parts) = match spare {
            Some((id, parts)) => (
                ContextGuard {
                    handle: Arc::clone(self),
                    id,
                    dispose: true,
                },
                parts,
            ),
            None => self.open_page().await?,
        };
        Ok(PreparedPage {
            context,
            page: parts.page,
            interception: parts.interception,
        })
    }

    /// Opens a blank page in a new context and prepares it for a task: requests paused
    /// and refused until a guard is installed, lifecycle, network and console events on,
    /// the default viewport.
    async fn open_page(self: &Arc<Self>) -> Result<(ContextGuard, PageParts), CodedError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Created {
            target_id: String,
        }
        let context = self.new_context().await?;
        let created: Created = self
            .connection
            .call(
                "Target.createTarget",
                json!({ "url": "about:blank", "browserContextId": context.id() }),
            )
            .await
            .map_err(|error| self.classify(&error, "cannot open a page"))?;
        let page = Page::attach(&self.connection, &created.target_id)
            .await
            .map_err(|error| self.classify(&error, "cannot attach to a page"))?;
        let (interception, interception_enabled) = Interception::start(&page);
        // Sent one after another without waiting, answered in order: one round trip.
        let calls = [
            interception_enabled,
            page.start("Page.enable", json!({})),
            page.start("Page.setLifecycleEventsEnabled", json!({ "enabled": true })),
            page.start("Network.enable", json!({})),
            page.start("Runtime.enable", json!({})),
            page.start(
                "Emulation.setDeviceMetricsOverride",
                viewport_params(&Viewport::default()),
            ),
        ];
        for call in calls {
            call.answer::<IgnoredAny>()
                .await
                .map_err(|error| self.classify(&error, "cannot prepare a page"))?;
        }
        Ok((context, PageParts { page, interception }))
    }

    /// Opens spare pages up to the target on a task of its own, one refill at a time.
    /// Called inside the runtime.
    pub fn refill_spares_in_background(self: &Arc<Self>) {
        if self.spare_target == 0 || self.refilling.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.refilling.store(false, Ordering::SeqCst);
            return;
        };
        // Weak: a browser being replaced must not be kept alive by its refill.
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            while let Some(handle) = weak.upgrade() {
                let missing = handle
                    .spares
                    .lock()
                    .map(|spares| spares.len() < handle.spare_target)
                    .unwrap_or(false);
                if !missing || !handle.is_usable() {
                    handle.refilling.store(false, Ordering::SeqCst);
                    return;
                }
                match handle.open_page().await {
                    Ok((context, parts)) => {
                        // The context now belongs to the spare list, not to a guard.
                        let id = context.into_id();
                        if let Ok(mut spares) = handle.spares.lock() {
                            spares.push((id, parts));
                        }
                    }
                    Err(error) => {
                        warn!(error = %error, "cannot open a spare page");
                        handle.refilling.store(false, Ordering::SeqCst);
                        return;
                    }
                }
            }
        });
    }

    /// Opens an isolated browser context; it is disposed when the guard drops.
    pub async fn new_context(self: &Arc<Self>) -> Result<ContextGuard, CodedError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Created {
            browser_context_id: String,
        }
        let created: Created = self
            .connection
            .call("Target.createBrowserContext", json!({}))
            .await
            .map_err(|error| self.classify(&error, "cannot create a browser context"))?;
        Ok(ContextGuard {
            handle: Arc::clone(self),
            id: created.browser_context_id,
            dispose: true,
        })
    }

    /// Turns a failed call into a task error, marking the browser broken when the error
    /// says it is gone: a call that timed out means the browser (or its renderer) hangs,
    /// and it is replaced like one that died.
    pub fn classify(&self, error: &CdpError, what: &str) -> CodedError {
        if error.browser_gone() || !process_is_alive(self.process.pid) {
            self.mark_broken();
            CodedError::new(
                ErrorCode::BrowserCrashed,
                format!("{what}: the browser stopped answering"),
            )
        } else {
            CodedError::new(ErrorCode::BrowserError, format!("{what}: {error}"))
        }
    }

    async fn ping(&self) -> bool {
        self.connection
            .call::<IgnoredAny>("Browser.getVersion", json!({}))
            .await
            .is_ok()
    }
}

/// A browser context that lives as long as this guard.
pub struct ContextGuard {
    handle: Arc<BrowserHandle>,
    id: String,
    /// False once the context was handed to the spare list.
    dispose: bool,
}

impl ContextGuard {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Gives up the context without disposing it (it is kept as a spare).
    fn into_id(mut self) -> String {
        self.dispose = false;
        std::mem::take(&mut self.id)
    }

    pub fn handle(&self) -> &Arc<BrowserHandle> {
        &self.handle
    }
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        if !self.dispose {
            return;
        }
        // Disposing a context closes its pages and drops its cookies, storage and cache.
        // Nobody waits for it: the task is over. A failure is logged.
        self.handle.connection.send_detached(
            None,
            "Target.disposeBrowserContext",
            json!({ "browserContextId": self.id }),
            FailureLog::Warn,
        );
    }
}

/// A browser's processes and profile; killed and removed when dropped (on the blocking
/// pool when dropped inside the runtime: killing waits for the processes to go).
struct BrowserProcess {
    pid: u32,
    /// The main process, reaped once killed so that no zombie is left per browser.
    child: Mutex<Option<Child>>,
    /// The profile directory; its path marks every process of this browser.
    profile_dir: PathBuf,
    /// Set once the processes are killed and the profile removed (or handed on).
    removed: AtomicBool,
}

impl BrowserProcess {
    fn new(child: Child, profile_dir: PathBuf) -> Self {
        Self {
            pid: child.id(),
            child: Mutex::new(Some(child)),
            profile_dir,
            removed: AtomicBool::new(false),
        }
    }

    /// Kills every process of this browser and waits until they are gone: the main
    /// process, everything descended from it (zygotes, renderers, utilities), and
    /// anything else carrying our profile path. Blocking.
    fn kill(&self) {
        let marker = format!("--user-data-dir={}", self.profile_dir.display());
        let mut processes = processes_with_argument(&marker);
        processes.push(self.pid);
        processes.extend(descendants_of(self.pid));
        processes.sort_unstable();
        processes.dedup();
        for pid in &processes {
            kill_process(*pid);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while processes.iter().any(|pid| process_is_alive(*pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // `try_wait`: a process that survived SIGKILL (stuck in the kernel) must not
        // block this thread; it is reaped by a later kill, or stays a zombie.
        if let Ok(mut child) = self.child.lock()
            && let Some(child) = child.as_mut()
            && let Err(error) = child.try_wait()
        {
            debug!(pid = self.pid, error = %error, "cannot reap the browser process");
        }
    }

    /// Kills the browser, then removes its profile, which can only go once nothing
    /// writes into it any more. Once; blocking.
    fn remove(&self) {
        if self.removed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.kill();
        let mut attempts_left = 5;
        loop {
            match std::fs::remove_dir_all(&self.profile_dir) {
                Ok(()) => return,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
                Err(error) if attempts_left == 0 => {
                    warn!(path = %self.profile_dir.display(), error = %error, "cannot remove a browser profile");
                    return;
                }
                Err(_) => {
                    attempts_left -= 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Hands what must be cleaned up to a new value: this one is then done.
    fn take(&mut self) -> Self {
        let removed = self.removed.swap(true, Ordering::SeqCst);
        Self {
            pid: self.pid,
            child: Mutex::new(self.child.get_mut().ok().and_then(Option::take)),
            profile_dir: self.profile_dir.clone(),
            removed: AtomicBool::new(removed),
        }
    }
}

impl Drop for BrowserProcess {
    fn drop(&mut self) {
        if self.removed.load(Ordering::SeqCst) {
            return;
        }
        let leftover = self.take();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || leftover.remove());
            }
            Err(_) => leftover.remove(),
        }
    }
}

/// Starts browser processes from one long-lived thread.
///
/// Chromium is started with a parent-death signal (see [`die_with_launcher`]), which
/// the kernel sends when the *thread* that started it ends, not the process. The
/// runtime's blocking threads end after a while idle, so a browser started from one of
/// them would be killed then; this thread lives as long as the pool.
struct Launcher {
    requests: mpsc::Sender<(Command, oneshot::Sender<std::io::Result<Child>>)>,
}

impl Launcher {
    fn start() -> std::io::Result<Self> {
        let (requests, incoming) =
            mpsc::channel::<(Command, oneshot::Sender<std::io::Result<Child>>)>();
        std::thread::Builder::new()
            .name("chromium-launcher".to_owned())
            .spawn(move || {
                // Ends when the pool drops its sender; the kernel then kills what it
                // started, which the pool has killed already.
                for (mut command, reply) in incoming {
                    let _caller_gone = reply.send(command.spawn());
                }
            })?;
        Ok(Self { requests })
    }

    async fn spawn(&self, command: Command) -> std::io::Result<Child> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((command, reply))
            .map_err(|_| std::io::Error::other("the launcher thread is gone"))?;
        answer
            .await
            .map_err(|_| std::io::Error::other("the launcher thread is gone"))?
    }
}

/// Asks the kernel to SIGKILL the child when the thread that started it ends, which a
/// SIGKILL'd worker's threads do: a worker that cannot clean up leaves no browser.
/// (Chromium's helpers exit when their browser process is gone.)
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_launcher(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe functions may be called. It makes one system call (prctl) and
    // reads errno; it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Other systems have no parent-death signal; a killed worker leaves its browser there.
#[cfg(not(target_os = "linux"))]
fn die_with_launcher(_command: &mut Command) {}

/// Reads Chromium's stderr until it prints its DevTools address, then keeps reading it
/// on the same thread until Chromium ends, logging at debug level: a pipe nobody reads
/// fills up and blocks the browser.
async fn devtools_url(stderr: ChildStderr, timeout: Duration) -> Result<String, CodedError> {
    let (found, answer) = oneshot::channel::<Result<String, String>>();
    std::thread::Builder::new()
        .name("chromium-stderr".to_owned())
        .spawn(move || {
            let mut waiting = Some(found);
            // The last lines before the address, to explain a failed start.
            let mut recent: VecDeque<String> = VecDeque::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                debug!(target: "chromium", "{line}");
                if waiting.is_none() {
                    continue;
                }
                if let Some((_, url)) = line.split_once("DevTools listening on ") {
                    if let Some(sender) = waiting.take() {
                        let _launch_gave_up = sender.send(Ok(url.trim().to_owned()));
                    }
                } else {
                    if recent.len() == 10 {
                        recent.pop_front();
                    }
                    recent.push_back(line);
                }
            }
            if let Some(sender) = waiting {
                let _launch_gave_up = sender.send(Err(Vec::from(recent).join("\n")));
            }
        })
        .map_err(|error| {
            CodedError::new(
                ErrorCode::BrowserError,
                format!("cannot read the browser's output: {error}"),
            )
        })?;
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(Ok(url))) => Ok(url),
        Ok(Ok(Err(output))) => Err(CodedError::new(
            ErrorCode::BrowserError,
            format!("the browser exited before it listened for DevTools: {output}"),
        )),
        // The reader thread ended without a word: it cannot, but it is not a hang.
        Ok(Err(_)) => Err(CodedError::new(
            ErrorCode::BrowserError,
            "the browser's output ended before its DevTools address",
        )),
        Err(_) => Err(CodedError::new(
            ErrorCode::BrowserError,
            format!(
                "the browser did not print its DevTools address within {} s",
                timeout.as_secs()
            ),
        )),
    }
}

/// One of the pool's browsers, and how many tasks run on it now.
struct Slot {
    /// The slot's browser. A std mutex: held only to read or swap the handle.
    current: Mutex<Option<Arc<BrowserHandle>>>,
    /// Held while the slot's browser is checked and, when needed, replaced: a browser
    /// is launched once, however many tasks find it gone.
    replacing: tokio::sync::Mutex<()>,
    /// Tasks on this browser now; a task goes to the least busy browser.
    busy: AtomicUsize,
}

/// A task's place on a slot, given back when the task's browser work ends.
struct SlotUse<'a> {
    slot: &'a Slot,
}

impl Drop for SlotUse<'_> {
    fn drop(&mut self) {
        self.slot.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct BrowserPool {
    settings: BrowserSettings,
    chrome_path: PathBuf,
    launcher: Launcher,
    /// `browser.browsers` browsers, which share the worker's concurrency: with `c`
    /// concurrent tasks and `b` browsers, each runs about `c / b` at once, and a browser
    /// that crashes takes only its own tasks down.
    slots: Vec<Slot>,
    permits: Arc<Semaphore>,
    launches: AtomicU64,
    /// The proxy every browser of this pool goes through (see [`crate::egress`]); none
    /// when the policy refuses nothing (`network.allow_private`), where it would only
    /// add a hop.
    egress: Option<EgressProxy>,
}

impl BrowserPool {
    /// A pool whose browsers reach only what `policy` allows. Starts the egress proxy,
    /// so it must be called inside the tokio runtime.
    pub fn new(
        settings: BrowserSettings,
        max_pages: usize,
        policy: &NetworkPolicy,
    ) -> Result<Arc<Self>, CodedError> {
        let chrome_path = find_chrome(settings.chrome_path.as_deref())?;
        let launcher = Launcher::start().map_err(|error| {
            CodedError::new(
                ErrorCode::BrowserError,
                format!("cannot start the browser launcher thread: {error}"),
            )
        })?;
        let egress = if policy.refuses_nothing() {
            None
        } else {
            let proxy = EgressProxy::start(policy.clone()).map_err(|error| {
                CodedError::new(
                    ErrorCode::BrowserError,
                    format!("cannot start the egress proxy: {error}"),
                )
            })?;
            Some(proxy)
        };
        if egress.is_some()
            && settings
                .extra_args
                .iter()
                .any(|argument| argument.starts_with("--proxy-") || argument == "--no-proxy-server")
        {
            warn!(
                "browser.extra_args sets a proxy flag, which replaces the egress proxy's: \
                 WebSockets, WebRTC, service workers and clicked windows escape the network policy"
            );
        }
        let slots = (0..settings.browsers.max(1))
            .map(|_| Slot {
                current: Mutex::new(None),
                replacing: tokio::sync::Mutex::new(()),
                busy: AtomicUsize::new(0),
            })
            .collect();
        Ok(Arc::new(Self {
            settings,
            chrome_path,
            launcher,
            slots,
            permits: Arc::new(Semaphore::new(max_pages.max(1))),
            launches: AtomicU64::new(0),
            egress,
        }))
    }

    pub fn chrome_path(&self) -> &Path {
        &self.chrome_path
    }

    /// How many browsers this pool has started (`browser.browsers` + replacements).
    pub fn launches(&self) -> u64 {
        self.launches.load(Ordering::SeqCst)
    }

    /// Starts every browser ahead of the first task. The warm-up counts as each
    /// browser's first use.
    pub async fn warm_up(self: &Arc<Self>) -> Result<(), CodedError> {
        for (index, slot) in self.slots.iter().enumerate() {
            let handle = self.browser(slot).await?;
            handle.tasks_started.fetch_add(1, Ordering::Relaxed);
            info!(pid = handle.pid(), browser = index, "browser ready");
            handle.refill_spares_in_background();
        }
        Ok(())
    }

    /// The least busy browser's slot, counted as one task busier until the use drops.
    fn take_slot(&self) -> SlotUse<'_> {
        let slot = self
            .slots
            .iter()
            .min_by_key(|slot| slot.busy.load(Ordering::SeqCst))
            .unwrap_or(&self.slots[0]);
        slot.busy.fetch_add(1, Ordering::SeqCst);
        SlotUse { slot }
    }

    /// Runs `job` with a live browser, once one of the worker's page permits is free. A
    /// panic in `job` fails the task (`internal`) instead of the worker.
    pub async fn run<T, F, Job>(self: &Arc<Self>, job: F) -> Result<T, CodedError>
    where
        F: FnOnce(Arc<BrowserHandle>) -> Job,
        Job: Future<Output = Result<T, CodedError>>,
    {
        let _permit = self.permits.acquire().await.map_err(|_| {
            CodedError::new(ErrorCode::BrowserError, "the browser pool is shut down")
        })?;
        let slot = self.take_slot();
        let handle = self.browser(slot.slot).await?;
        handle.tasks_started.fetch_add(1, Ordering::Relaxed);
        match AssertUnwindSafe(job(handle)).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|text| (*text).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(CodedError::new(
                    ErrorCode::Internal,
                    format!("the browser job panicked: {message}"),
                ))
            }
        }
    }

    /// The slot's browser, launched or replaced when needed.
    async fn browser(&self, slot: &Slot) -> Result<Arc<BrowserHandle>, CodedError> {
        let _replacing = slot.replacing.lock().await;
        let current = slot
            .current
            .lock()
            .map_err(|_| CodedError::new(ErrorCode::Internal, "browser pool lock poisoned"))?
            .clone();
        if let Some(handle) = current {
            if handle.is_usable() {
                let recycle_after = self.settings.recycle_after;
                let tasks = handle.tasks_started.load(Ordering::Relaxed);
                let served_its_quota = recycle_after != 0 && tasks >= recycle_after;
                let memory_limit = self.settings.recycle_above_mb.saturating_mul(MIB);
                if !served_its_quota && !handle.over_memory_limit(memory_limit).await {
                    return Ok(handle);
                }
                // Healthy but due: tasks still running keep it alive; it is killed (whole
                // process tree, profile removed) when the last of them drops it.
                info!(pid = handle.pid(), tasks, "recycling the browser");
            } else {
                warn!(
                    pid = handle.pid(),
                    "replacing a browser that died or stopped answering"
                );
                // Killed now, not when its last task lets go: those tasks fail at once.
                let dead = Arc::clone(&handle);
                tokio::task::spawn_blocking(move || dead.process.kill());
            }
            if let Ok(mut current) = slot.current.lock() {
                current.take();
            }
        }
        let handle = Arc::new(self.launch().await?);
        if let Ok(mut current) = slot.current.lock() {
            *current = Some(Arc::clone(&handle));
        }
        Ok(handle)
    }

    /// Chromium's command line for a browser with this profile directory.
    fn arguments(&self, profile_dir: &Path) -> Vec<OsString> {
        let mut arguments: Vec<OsString> = CHROMIUM_FLAGS.iter().map(OsString::from).collect();
        let mut profile = OsString::from("--user-data-dir=");
        profile.push(profile_dir);
        arguments.push(profile);
        arguments.push(format!("--window-size={},{}", WINDOW_SIZE.0, WINDOW_SIZE.1).into());
        if let Some(egress) = &self.egress {
            arguments.extend(egress.chromium_flags().map(OsString::from));
        }
        let sandbox = match self.settings.sandbox {
            SandboxMode::On => true,
            SandboxMode::Off => false,
            // Chromium's sandbox cannot start as root.
            SandboxMode::Auto => !running_as_root(),
        };
        if !sandbox {
            arguments.extend(["--no-sandbox", "--disable-setuid-sandbox"].map(OsString::from));
        }
        // Last: an operator's flag wins over ours.
        arguments.extend(self.settings.extra_args.iter().map(OsString::from));
        arguments
    }

    /// Starts Chromium, connects to it and reads its user agent.
    async fn launch(&self) -> Result<BrowserHandle, CodedError> {
        let started = Instant::now();
        let call_timeout = self.settings.call_timeout;
        // Unique in the process, not only in this pool: several pools (workers) in one
        // process must never share, or delete, each other's profile.
        static PROFILES: AtomicU64 = AtomicU64::new(0);
        let profile_dir = std::env::temp_dir().join(format!(
            "operator-chromium-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of a process that had the same id would be reused as is.
        let _ = std::fs::remove_dir_all(&profile_dir);
        let mut command = Command::new(&self.chrome_path);
        command
            .args(self.arguments(&profile_dir))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        die_with_launcher(&mut command);
        let mut child = self.launcher.spawn(command).await.map_err(|error| {
            CodedError::new(
                ErrorCode::BrowserError,
                format!("cannot start {}: {error}", self.chrome_path.display()),
            )
        })?;
        let stderr = child.stderr.take();
        // From here on, a failure drops `process`: the browser is killed, its profile
        // removed.
        let process = BrowserProcess::new(child, profile_dir);
        let stderr = stderr.ok_or_else(|| {
            CodedError::new(
                ErrorCode::BrowserError,
                "the browser's stderr is not a pipe",
            )
        })?;
        let url = devtools_url(stderr, call_timeout).await?;
        let connection = Connection::connect(&url, call_timeout)
            .await
            .map_err(|error| CodedError::new(ErrorCode::BrowserError, error.to_string()))?;
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Version {
            user_agent: String,
        }
        let version: Version = connection
            .call("Browser.getVersion", json!({}))
            .await
            .map_err(|error| {
                CodedError::new(
                    ErrorCode::BrowserError,
                    format!("the new browser does not answer: {error}"),
                )
            })?;
        self.launches.fetch_add(1, Ordering::SeqCst);
        info!(
            pid = process.pid,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "browser launched"
        );
        Ok(BrowserHandle {
            connection,
            process,
            user_agent: version.user_agent,
            broken: AtomicBool::new(false),
            tasks_started: AtomicU64::new(0),
            memory_checked: Mutex::new(None),
            call_timeout,
            spares: Mutex::new(Vec::new()),
            spare_target: self.settings.spare_pages,
            refilling: AtomicBool::new(false),
            egress: self
                .egress
                .as_ref()
                .map(|egress| Arc::clone(egress.refusals())),
        })
    }

    /// Pings the browser so that a browser that died or hangs is noticed before a task
    /// needs it. Runs until the pool is dropped.
    pub fn spawn_keepalive(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                let handles: Vec<_> = pool
                    .slots
                    .iter()
                    .filter_map(|slot| slot.current.lock().ok().and_then(|current| current.clone()))
                    .collect();
                // Not held across the pings: a browser replaced meanwhile can go.
                drop(pool);
                for handle in handles {
                    if !handle.ping().await {
                        handle.mark_broken();
                        warn!(
                            pid = handle.pid(),
                            "browser did not answer its keep-alive ping; it will be replaced"
                        );
                    }
                    // The last reference to a replaced browser kills its processes, on
                    // the blocking pool (see `BrowserProcess`).
                    drop(handle);
                }
            }
        })
    }

    /// Stops the browsers and their processes, then the egress proxy (worker shutdown).
    pub fn shutdown(&self) {
        for slot in &self.slots {
            let handle = slot
                .current
                .lock()
                .ok()
                .and_then(|mut current| current.take());
            if let Some(handle) = handle {
                handle.process.remove();
            }
        }
        if let Some(egress) = &self.egress {
            egress.stop();
        }
    }
}

impl Drop for BrowserPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The proportional set size of `pid` and every process below it, in bytes.
fn memory_bytes(pid: u32) -> u64 {
    std::iter::once(pid)
        .chain(descendants_of(pid))
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .filter_map(|rollup| {
            rollup.lines().find_map(|line| {
                let kilobytes = line.strip_prefix("Pss:")?.trim().strip_suffix("kB")?;
                kilobytes.trim().parse::<u64>().ok()
            })
        })
        .map(|kilobytes| kilobytes * 1024)
        .sum()
}

/// Finds Chromium: the configured path, or the usual names on `PATH`.
pub fn find_chrome(configured: Option<&Path>) -> Result<PathBuf, CodedError> {
    if let Some(path) = configured {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        return Err(CodedError::new(
            ErrorCode::BrowserError,
            format!(
                "browser.chrome_path (CHROME_PATH) {} does not exist",
                path.display()
            ),
        ));
    }
    let search_path = std::env::var_os("PATH").unwrap_or_default();
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for directory in std::env::split_paths(&search_path) {
            let candidate = directory.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(CodedError::new(
        ErrorCode::BrowserError,
        "Chromium not found: install it (apt-get install chromium) or set CHROME_PATH",
    ))
}

fn running_as_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self")
        .map(|metadata| metadata.uid() == 0)
        .unwrap_or(false)
}

/// Whether a process runs (a zombie has exited and only waits to be reaped).
fn process_is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Processes whose command line contains `argument`.
fn processes_with_argument(argument: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| {
                    cmdline
                        .split(|byte| *byte == 0)
                        .any(|part| part == argument.as_bytes())
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Every process below `root` in the process tree (from the parent ids in /proc).
fn descendants_of(root: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the parenthesised command: state, then the parent id.
            let parent = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, parent))
        })
        .collect();
    let mut found = vec![root];
    let mut index = 0;
    while index < found.len() {
        let parent = found[index];
        found.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        index += 1;
    }
    found.remove(0);
    found
}

fn kill_process(pid: u32) {
    if process_is_alive(pid) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}
