//! The Chromium pool: one warm browser per worker process, a fresh browser context per
//! task, and a bounded blocking pool for headless_chrome's blocking calls.
//!
//! headless_chrome is synchronous, so every browser call runs in `spawn_blocking`, gated
//! by a semaphore sized to the worker's concurrency: the async runtime threads never block
//! on Chromium, and Chromium never sees more pages than the worker runs tasks.
//!
//! Each task gets its own browser context (an incognito profile: cookies, storage and
//! cache are not shared), disposed when the task ends. headless_chrome keeps its
//! browser-level CDP calls private and cannot dispose a context, so the pool opens a
//! second, "control" connection to the same browser for that.
//!
//! A headless_chrome connection that carries no message for its timeout closes itself,
//! so a background keep-alive pings both connections; the same ping finds a browser that
//! died or hangs, which is then replaced.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headless_chrome::browser::transport::Transport;
use headless_chrome::protocol::cdp::{Browser as CdpBrowser, Target};
use headless_chrome::{Browser, LaunchOptions, Tab};
use operator_shared::config::{BrowserSettings, SandboxMode};
use operator_shared::error::{CodedError, ErrorCode};
use tokio::sync::Semaphore;
use tracing::{info, warn};

/// Flags for a quiet, reproducible headless browser on a server (see NOTES.md: without
/// the network ones Chromium keeps trying to reach Google's services).
///
/// Site isolation is off so that a cross-site iframe stays in its page's renderer and
/// its requests are paused by the page's request interception (the network guard); an
/// out-of-process iframe would be a separate target whose requests the guard never sees.
/// The feature list replaces headless_chrome's default `--disable-features` flag (see
/// [`REPLACED_DEFAULT_FLAGS`]), keeping what that one disabled.
const CHROMIUM_FLAGS: [&str; 10] = [
    "--disable-features=TranslateUI,BlinkGenPropertyTrees,IsolateOrigins,site-per-process",
    "--disable-site-isolation-trials",
    "--disable-gpu",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-quic",
    "--hide-scrollbars",
    "--mute-audio",
    "--no-default-browser-check",
    "--no-pings",
];

/// headless_chrome default flags replaced by ours (Chromium reads only the last
/// `--disable-features`), or dropped: with `--disable-popup-blocking` a page could open
/// new windows on its own, and a new window is a target outside its page's request
/// interception.
const REPLACED_DEFAULT_FLAGS: [&str; 2] = [
    "--disable-features=TranslateUI,BlinkGenPropertyTrees",
    "--disable-popup-blocking",
];

/// A launched browser and its control connection.
pub struct BrowserHandle {
    browser: Browser,
    control: Arc<Transport>,
    pid: Option<u32>,
    /// The profile directory; ours rather than headless_chrome's, which it cannot
    /// delete once the browser was killed.
    profile_dir: PathBuf,
    /// Set when a call failed in a way that suggests the browser is gone; the next
    /// task gets a new browser.
    broken: AtomicBool,
    pub tasks_started: AtomicU64,
    /// headless_chrome's per-call timeout: a call that takes longer means a hung browser.
    call_timeout: Duration,
    /// Blank pages, each in its own never-used context, opened ahead of the tasks that
    /// will take them: opening a page costs about half a second, the largest part of a
    /// simple task. Held as ids, not [`ContextGuard`]s, which would own the handle.
    spares: Mutex<Vec<(String, Arc<Tab>)>>,
    spare_target: usize,
    refilling: AtomicBool,
}

/// The viewport every page is opened with: the domain's default viewport, so a task
/// that keeps it makes no call to set it.
const DEFAULT_VIEWPORT: (u32, u32) = (1280, 800);

/// A blank page in a fresh context, for one task.
pub struct PreparedPage {
    pub context: ContextGuard,
    pub tab: Arc<Tab>,
}

impl BrowserHandle {
    pub fn browser(&self) -> &Browser {
        &self.browser
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }

    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
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
        !self.broken.load(Ordering::SeqCst) && self.pid.is_none_or(process_is_alive)
    }

    /// A blank page in a fresh context: a spare if one is ready, else opened now.
    pub fn take_page(self: &Arc<Self>) -> Result<PreparedPage, CodedError> {
        let spare = self.spares.lock().ok().and_then(|mut spares| spares.pop());
        if let Some((id, tab)) = spare {
            return Ok(PreparedPage {
                context: ContextGuard {
                    handle: Arc::clone(self),
                    id,
                    dispose: true,
                },
                tab,
            });
        }
        self.open_page()
    }

    fn open_page(self: &Arc<Self>) -> Result<PreparedPage, CodedError> {
        let context = self.new_context()?;
        let tab = self
            .browser
            .new_tab_with_options(Target::CreateTarget {
                url: "about:blank".to_owned(),
                left: None,
                top: None,
                width: None,
                height: None,
                window_state: None,
                browser_context_id: Some(context.id().to_owned()),
                enable_begin_frame_control: None,
                new_window: None,
                background: None,
                for_tab: None,
                hidden: None,
            })
            .map_err(|error| self.classify(&error, "cannot open a page"))?;
        crate::guard::prepare_page(&tab)
            .and_then(|()| {
                tab.call_method(
                    headless_chrome::protocol::cdp::Emulation::SetDeviceMetricsOverride {
                        width: DEFAULT_VIEWPORT.0,
                        height: DEFAULT_VIEWPORT.1,
                        device_scale_factor: 1.0,
                        mobile: false,
                        scale: None,
                        screen_width: None,
                        screen_height: None,
                        position_x: None,
                        position_y: None,
                        dont_set_visible_size: None,
                        screen_orientation: None,
                        viewport: None,
                        display_feature: None,
                        device_posture: None,
                    },
                )
                .map(|_| ())
            })
            .map_err(|error| self.classify(&error, "cannot prepare a page"))?;
        Ok(PreparedPage { context, tab })
    }

    /// Opens spare pages up to the target, on the blocking pool, one refill at a time.
    /// Called on a blocking-pool thread (inside the runtime).
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
        runtime.spawn_blocking(move || {
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
                match handle.open_page() {
                    Ok(page) => {
                        let PreparedPage { context, tab } = page;
                        // The context now belongs to the spare list, not to a guard.
                        let id = context.into_id();
                        if let Ok(mut spares) = handle.spares.lock() {
                            spares.push((id, tab));
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
    pub fn new_context(self: &Arc<Self>) -> Result<ContextGuard, CodedError> {
        let reply = self
            .control
            .call_method_on_browser(Target::CreateBrowserContext {
                dispose_on_detach: None,
                proxy_server: None,
                proxy_bypass_list: None,
                origins_with_universal_network_access: None,
            })
            .map_err(|error| self.classify(&error, "cannot create a browser context"))?;
        Ok(ContextGuard {
            handle: Arc::clone(self),
            id: reply.browser_context_id,
            dispose: true,
        })
    }

    /// Turns a headless_chrome error (its API speaks `anyhow`) into a task error, marking
    /// the browser broken when the error says it is gone.
    pub fn classify(&self, error: &anyhow::Error, what: &str) -> CodedError {
        // A call that timed out means the browser (or its renderer) hangs: it is
        // replaced, like one that died.
        let crashed = error
            .downcast_ref::<headless_chrome::browser::transport::ConnectionClosed>()
            .is_some()
            || error
                .downcast_ref::<headless_chrome::util::Timeout>()
                .is_some()
            || !self.pid.is_none_or(process_is_alive);
        if crashed {
            self.mark_broken();
            CodedError::new(
                ErrorCode::BrowserCrashed,
                format!("{what}: the browser stopped answering"),
            )
        } else {
            CodedError::new(ErrorCode::BrowserError, format!("{what}: {error}"))
        }
    }

    fn ping(&self) -> bool {
        let browser_answers = self.browser.get_version().is_ok();
        let control_answers = self
            .control
            .call_method_on_browser(CdpBrowser::GetVersion(None))
            .is_ok();
        browser_answers && control_answers
    }
}

impl BrowserHandle {
    /// Kills every process of this browser and waits until they are gone: the main
    /// process, everything descended from it (zygotes, renderers, the network service),
    /// and anything else carrying our profile path.
    fn kill(&self) {
        let marker = format!("--user-data-dir={}", self.profile_dir.display());
        let mut processes = processes_with_argument(&marker);
        if let Some(pid) = self.pid {
            processes.push(pid);
            processes.extend(descendants_of(pid));
        }
        processes.sort_unstable();
        processes.dedup();
        for pid in &processes {
            kill_process(*pid);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while processes.iter().any(|pid| process_is_alive(*pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BrowserHandle {
    fn drop(&mut self) {
        // The profile can only go once nothing writes into it any more.
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
        self.id.clone()
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
        let disposed = self
            .handle
            .control
            .call_method_on_browser(Target::DisposeBrowserContext {
                browser_context_id: self.id.clone(),
            });
        if let Err(error) = disposed {
            warn!(context = %self.id, error = %error, "disposing a browser context failed");
        }
    }
}

pub struct BrowserPool {
    settings: BrowserSettings,
    chrome_path: PathBuf,
    /// The current browser. A std mutex: it is only taken on blocking-pool threads, and
    /// only to read or swap the handle (and to launch, which must not happen twice).
    current: Mutex<Option<Arc<BrowserHandle>>>,
    permits: Arc<Semaphore>,
    launches: AtomicU64,
}

impl BrowserPool {
    pub fn new(settings: BrowserSettings, max_pages: usize) -> Result<Arc<Self>, CodedError> {
        let chrome_path = find_chrome(settings.chrome_path.as_deref())?;
        Ok(Arc::new(Self {
            settings,
            chrome_path,
            current: Mutex::new(None),
            permits: Arc::new(Semaphore::new(max_pages.max(1))),
            launches: AtomicU64::new(0),
        }))
    }

    pub fn chrome_path(&self) -> &Path {
        &self.chrome_path
    }

    /// How many browsers this pool has started (1 + replacements).
    pub fn launches(&self) -> u64 {
        self.launches.load(Ordering::SeqCst)
    }

    /// Starts the browser ahead of the first task.
    pub async fn warm_up(self: &Arc<Self>) -> Result<(), CodedError> {
        self.run_blocking(|handle| {
            info!(pid = ?handle.pid(), "browser ready");
            handle.refill_spares_in_background();
            Ok(())
        })
        .await
    }

    /// Runs `job` on a blocking-pool thread with a live browser.
    pub async fn run_blocking<T, F>(self: &Arc<Self>, job: F) -> Result<T, CodedError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<BrowserHandle>) -> Result<T, CodedError> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| {
                CodedError::new(ErrorCode::BrowserError, "the browser pool is shut down")
            })?;
        let pool = Arc::clone(self);
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let handle = pool.browser()?;
            handle.tasks_started.fetch_add(1, Ordering::Relaxed);
            job(handle)
        })
        .await;
        match joined {
            Ok(result) => result,
            Err(error) => Err(CodedError::new(
                ErrorCode::Internal,
                format!("browser job panicked or was cancelled: {error}"),
            )),
        }
    }

    /// The current browser, launched or replaced when needed. Blocking.
    fn browser(&self) -> Result<Arc<BrowserHandle>, CodedError> {
        let mut current = self
            .current
            .lock()
            .map_err(|_| CodedError::new(ErrorCode::Internal, "browser pool lock poisoned"))?;
        if let Some(handle) = current.as_ref()
            && handle.is_usable()
        {
            let recycle_after = self.settings.recycle_after;
            if recycle_after == 0 || handle.tasks_started.load(Ordering::Relaxed) < recycle_after {
                return Ok(Arc::clone(handle));
            }
            // Healthy but due: tasks still running keep it alive; it is killed (whole
            // process tree, profile removed) when the last of them drops it.
            info!(pid = ?handle.pid, tasks = recycle_after, "recycling the browser");
            current.take();
        }
        if let Some(old) = current.take() {
            warn!(pid = ?old.pid, "replacing a browser that died or stopped answering");
            old.kill();
        }
        let handle = Arc::new(self.launch()?);
        *current = Some(Arc::clone(&handle));
        Ok(handle)
    }

    fn launch(&self) -> Result<BrowserHandle, CodedError> {
        let started = Instant::now();
        let mut flags: Vec<OsString> = CHROMIUM_FLAGS.iter().map(OsString::from).collect();
        flags.extend(self.settings.extra_args.iter().map(OsString::from));
        let flag_refs: Vec<&std::ffi::OsStr> = flags.iter().map(OsString::as_os_str).collect();
        let replaced: Vec<&std::ffi::OsStr> = REPLACED_DEFAULT_FLAGS
            .iter()
            .map(std::ffi::OsStr::new)
            .collect();
        let sandbox = match self.settings.sandbox {
            SandboxMode::On => true,
            SandboxMode::Off => false,
            // Chromium's sandbox cannot start as root.
            SandboxMode::Auto => !running_as_root(),
        };
        let profile_dir = std::env::temp_dir().join(format!(
            "operator-chromium-{}-{}",
            std::process::id(),
            self.launches.load(Ordering::SeqCst)
        ));
        // A leftover from an earlier failed launch of this process would be reused as is.
        let _ = std::fs::remove_dir_all(&profile_dir);
        let options = LaunchOptions::default_builder()
            .path(Some(self.chrome_path.clone()))
            .user_data_dir(Some(profile_dir.clone()))
            .headless(true)
            .sandbox(sandbox)
            .enable_gpu(false)
            .window_size(Some((1280, 800)))
            .args(flag_refs)
            .ignore_default_args(replaced)
            // headless_chrome accepts any certificate by default; a browser fetching
            // other people's pages must not.
            .ignore_certificate_errors(false)
            .idle_browser_timeout(self.settings.call_timeout)
            .build()
            .map_err(|error| {
                CodedError::new(ErrorCode::BrowserError, format!("browser options: {error}"))
            })?;
        let browser = Browser::new(options).map_err(|error| {
            CodedError::new(
                ErrorCode::BrowserError,
                format!("cannot start {}: {error}", self.chrome_path.display()),
            )
        })?;
        let ws_url = url::Url::parse(&browser.get_ws_url()).map_err(|error| {
            CodedError::new(
                ErrorCode::BrowserError,
                format!("bad DevTools address: {error}"),
            )
        })?;
        let pid = browser.get_process_id();
        let control =
            Transport::new(ws_url, pid, self.settings.call_timeout, None).map_err(|error| {
                CodedError::new(
                    ErrorCode::BrowserError,
                    format!("cannot open the browser control connection: {error}"),
                )
            })?;
        self.launches.fetch_add(1, Ordering::SeqCst);
        info!(pid = ?pid, elapsed_ms = started.elapsed().as_millis() as u64, "browser launched");
        Ok(BrowserHandle {
            browser,
            control: Arc::new(control),
            pid,
            profile_dir,
            broken: AtomicBool::new(false),
            tasks_started: AtomicU64::new(0),
            call_timeout: self.settings.call_timeout,
            spares: Mutex::new(Vec::new()),
            spare_target: self.settings.spare_pages,
            refilling: AtomicBool::new(false),
        })
    }

    /// Pings the browser so idle connections stay open and a dead browser is noticed
    /// before a task needs it. Runs until the pool is dropped.
    pub fn spawn_keepalive(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                let handle = pool.current.lock().ok().and_then(|current| current.clone());
                let Some(handle) = handle else { continue };
                let answered = tokio::task::spawn_blocking(move || {
                    let answered = handle.ping();
                    if !answered {
                        handle.mark_broken();
                    }
                    answered
                })
                .await
                .unwrap_or(false);
                if !answered {
                    warn!("browser did not answer its keep-alive ping; it will be replaced");
                }
            }
        })
    }

    /// Stops the browser and its processes (worker shutdown).
    pub fn shutdown(&self) {
        let handle = self
            .current
            .lock()
            .ok()
            .and_then(|mut current| current.take());
        if let Some(handle) = handle {
            handle.kill();
        }
    }
}

impl Drop for BrowserPool {
    fn drop(&mut self) {
        self.shutdown();
    }
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
