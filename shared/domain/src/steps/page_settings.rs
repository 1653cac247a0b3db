//! `set_viewport`, `set_user_agent`, `set_extra_headers`, `set_cookies`: the page
//! options a browse input sets for the whole task, changed between steps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    Action, StepContext, StepOutput, StepPage, check_cookies, check_headers, check_user_agent,
};
use crate::error::CodedError;
use crate::spec::{TargetUrl, Viewport};

/// A cookie to set before the page loads, or by a `set_cookies` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieSpec {
    pub name: String,
    pub value: String,
    /// The cookie's URL; defaults to the task's starting URL (for a step, the current
    /// page's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<TargetUrl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub secure: bool,
    #[serde(default)]
    pub http_only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetViewport {
    pub viewport: Viewport,
}

impl Action for SetViewport {
    const NAME: &'static str = "set_viewport";

    fn validate(&self, field: &str) -> Result<(), CodedError> {
        self.viewport.validate(&format!("{field}.viewport"))
    }

    async fn run<P: StepPage>(
        &self,
        page: &P,
        _step: &StepContext,
        _out: &mut StepOutput,
    ) -> Result<(), CodedError> {
        page.set_viewport(&self.viewport).await
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetUserAgent {
    pub user_agent: String,
}

impl Action for SetUserAgent {
    const NAME: &'static str = "set_user_agent";

    fn validate(&self, field: &str) -> Result<(), CodedError> {
        check_user_agent(&format!("{field}.user_agent"), &self.user_agent)
    }

    async fn run<P: StepPage>(
        &self,
        page: &P,
        _step: &StepContext,
        _out: &mut StepOutput,
    ) -> Result<(), CodedError> {
        page.set_user_agent(&self.user_agent).await
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetExtraHeaders {
    pub headers: BTreeMap<String, String>,
}

impl Action for SetExtraHeaders {
    const NAME: &'static str = "set_extra_headers";

    fn validate(&self, field: &str) -> Result<(), CodedError> {
        check_headers(&format!("{field}.headers"), &self.headers)
    }

    async fn run<P: StepPage>(
        &self,
        page: &P,
        _step: &StepContext,
        _out: &mut StepOutput,
    ) -> Result<(), CodedError> {
        page.set_extra_headers(&self.headers).await
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetCookies {
    pub cookies: Vec<CookieSpec>,
}

impl Action for SetCookies {
    const NAME: &'static str = "set_cookies";

    fn urls(&self) -> Vec<&TargetUrl> {
        self.cookies
            .iter()
            .filter_map(|cookie| cookie.url.as_ref())
            .collect()
    }

    fn validate(&self, field: &str) -> Result<(), CodedError> {
        check_cookies(&format!("{field}.cookies"), &self.cookies)
    }

    async fn run<P: StepPage>(
        &self,
        page: &P,
        _step: &StepContext,
        _out: &mut StepOutput,
    ) -> Result<(), CodedError> {
        page.set_cookies(&self.cookies).await
    }
}
