//! What the model may do: the tools it is offered (OpenAI function definitions, or the
//! same described in the prompt in JSON mode) and their parsing into [`AgentAction`].
//! Every action on the page refers to an element by its index in the observation.

use serde_json::{Value, json};

/// One action the model asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentAction {
    Click {
        index: u32,
    },
    Type {
        index: u32,
        text: String,
        submit: bool,
    },
    Select {
        index: u32,
        values: Vec<String>,
    },
    Press {
        key: String,
        index: Option<u32>,
    },
    Hover {
        index: u32,
    },
    Scroll {
        down: bool,
        index: Option<u32>,
    },
    Goto {
        url: String,
    },
    GoBack,
    Wait {
        seconds: f64,
    },
    Extract {
        question: String,
    },
    Done {
        output: Value,
    },
    Fail {
        reason: String,
    },
}

impl AgentAction {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Click { .. } => "click",
            Self::Type { .. } => "type",
            Self::Select { .. } => "select",
            Self::Press { .. } => "press",
            Self::Hover { .. } => "hover",
            Self::Scroll { .. } => "scroll",
            Self::Goto { .. } => "goto",
            Self::GoBack => "go_back",
            Self::Wait { .. } => "wait",
            Self::Extract { .. } => "extract",
            Self::Done { .. } => "done",
            Self::Fail { .. } => "fail",
        }
    }

    /// The element it acts on, if any.
    pub fn index(&self) -> Option<u32> {
        match self {
            Self::Click { index }
            | Self::Type { index, .. }
            | Self::Select { index, .. }
            | Self::Hover { index } => Some(*index),
            Self::Press { index, .. } | Self::Scroll { index, .. } => *index,
            _ => None,
        }
    }

    /// Parses a tool call; the error says what was wrong, for the model to correct.
    pub fn parse(name: &str, arguments: &Value) -> Result<Self, String> {
        let index = |field: &str| -> Result<u32, String> {
            arguments
                .get(field)
                .and_then(|value| {
                    value
                        .as_u64()
                        .or_else(|| value.as_str().and_then(|text| text.trim().parse().ok()))
                })
                .and_then(|value| u32::try_from(value).ok())
                .ok_or_else(|| format!("{name} needs an element index in `{field}`"))
        };
        let optional_index = |field: &str| -> Option<u32> {
            arguments
                .get(field)
                .filter(|value| !value.is_null())
                .and_then(Value::as_u64)
                .and_then(|value| u32::try_from(value).ok())
        };
        let text = |field: &str| -> Result<String, String> {
            arguments
                .get(field)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("{name} needs a string `{field}`"))
        };
        Ok(match name {
            "click" => Self::Click {
                index: index("index")?,
            },
            "type" => Self::Type {
                index: index("index")?,
                text: text("text")?,
                submit: arguments
                    .get("submit")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            },
            "select" => Self::Select {
                index: index("index")?,
                values: match arguments.get("values").or_else(|| arguments.get("value")) {
                    Some(Value::Array(values)) => values
                        .iter()
                        .filter_map(|value| value.as_str().map(str::to_owned))
                        .collect(),
                    Some(Value::String(value)) => vec![value.clone()],
                    _ => return Err("select needs `values`, a list of option texts".to_owned()),
                },
            },
            "press" => Self::Press {
                key: text("key")?,
                index: optional_index("index"),
            },
            "hover" => Self::Hover {
                index: index("index")?,
            },
            "scroll" => Self::Scroll {
                down: arguments.get("direction").and_then(Value::as_str) != Some("up"),
                index: optional_index("index"),
            },
            "goto" => Self::Goto { url: text("url")? },
            "go_back" => Self::GoBack,
            "wait" => Self::Wait {
                seconds: arguments
                    .get("seconds")
                    .and_then(Value::as_f64)
                    .unwrap_or(1.0)
                    .clamp(0.1, 10.0),
            },
            "extract" => Self::Extract {
                question: text("question")?,
            },
            "done" => Self::Done {
                output: arguments.get("output").cloned().unwrap_or(Value::Null),
            },
            "fail" => Self::Fail {
                reason: text("reason").unwrap_or_else(|_| "no reason given".to_owned()),
            },
            other => return Err(format!("there is no tool named {other:?}")),
        })
    }
}

/// An action as the model gave it: parsed, with its reason and its arguments as
/// written (without the reason).
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    pub action: AgentAction,
    pub reason: Option<String>,
    pub arguments: Value,
}

impl Chosen {
    /// A tool call; the reason is the `reason` argument every tool has.
    pub fn from_call(name: &str, arguments: &Value) -> Result<Self, String> {
        let action = AgentAction::parse(name, arguments)?;
        let mut arguments = arguments.clone();
        let reason = arguments
            .as_object_mut()
            .and_then(|object| object.remove("reason"))
            .and_then(|reason| reason.as_str().map(str::to_owned));
        Ok(Self {
            action,
            reason,
            arguments,
        })
    }

    /// A JSON-mode answer: `{"reason": …, "action": …, "args": {…}}`.
    pub fn parse_json(content: &str) -> Result<Self, String> {
        let trimmed = content
            .trim()
            .trim_start_matches("```json")
            .trim_start_matches("```")
            .trim_end_matches("```")
            .trim();
        let value: Value = serde_json::from_str(trimmed)
            .map_err(|error| format!("the answer is not one JSON object: {error}"))?;
        let action = value
            .get("action")
            .and_then(Value::as_str)
            .ok_or("the answer has no `action`")?;
        let arguments = value.get("args").cloned().unwrap_or_else(|| json!({}));
        let mut chosen = Self::from_call(action, &arguments)?;
        if let Some(reason) = value.get("reason").and_then(Value::as_str) {
            chosen.reason = Some(reason.to_owned());
        }
        Ok(chosen)
    }
}

fn tool(name: &str, description: &str, properties: Value, required: &[&str]) -> Value {
    let mut properties = properties;
    if let Some(object) = properties.as_object_mut() {
        object.insert(
            "reason".to_owned(),
            json!({"type": "string", "description": "One short sentence: why this action."}),
        );
    }
    json!({
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
            },
        },
    })
}

/// The tools, with `done`'s output constrained by the task's schema when it has one
/// (a server with grammar-constrained decoding then cannot answer outside it).
pub fn definitions(output_schema: Option<&Value>) -> Vec<Value> {
    let index = json!({"type": "integer", "description": "The element's index, as in [12]."});
    vec![
        tool(
            "click",
            "Click an element.",
            json!({"index": index}),
            &["index"],
        ),
        tool(
            "type",
            "Type text into a field (its old value is replaced); a secret is typed by its placeholder, e.g. {{password}}.",
            json!({"index": index, "text": {"type": "string"}, "submit": {"type": "boolean", "description": "Press Enter after typing."}}),
            &["index", "text"],
        ),
        tool(
            "select",
            "Choose options of a select element, by their text.",
            json!({"index": index, "values": {"type": "array", "items": {"type": "string"}}}),
            &["index", "values"],
        ),
        tool(
            "press",
            "Press a key (Enter, Tab, Escape, ArrowDown, a character), in an element if given.",
            json!({"key": {"type": "string"}, "index": index}),
            &["key"],
        ),
        tool(
            "hover",
            "Move the mouse over an element.",
            json!({"index": index}),
            &["index"],
        ),
        tool(
            "scroll",
            "Scroll the page by most of a viewport, or an element into view.",
            json!({"direction": {"type": "string", "enum": ["down", "up"]}, "index": index}),
            &[],
        ),
        tool(
            "goto",
            "Open a URL.",
            json!({"url": {"type": "string"}}),
            &["url"],
        ),
        tool("go_back", "Go back to the previous page.", json!({}), &[]),
        tool(
            "wait",
            "Wait for the page to change on its own.",
            json!({"seconds": {"type": "number", "minimum": 0.1, "maximum": 10}}),
            &[],
        ),
        tool(
            "extract",
            "Read the whole page's text to answer a question about it; the answer comes back as this step's result.",
            json!({"question": {"type": "string"}}),
            &["question"],
        ),
        tool(
            "done",
            "The goal is reached: give the output.",
            json!({"output": output_schema.cloned().unwrap_or_else(|| json!({"description": "The result the goal asks for (any JSON)."}))}),
            &["output"],
        ),
        tool(
            "fail",
            "The goal cannot be reached: say why.",
            json!({"reason": {"type": "string"}}),
            &["reason"],
        ),
    ]
}

/// The tools described for JSON mode, one line each.
pub fn describe_for_json_mode(tools: &[Value]) -> String {
    tools
        .iter()
        .filter_map(|tool| {
            let function = tool.get("function")?;
            Some(format!(
                "- {}: {} Arguments: {}",
                function.get("name")?.as_str()?,
                function.get("description")?.as_str()?,
                function.pointer("/parameters/properties")?
            ))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_parse_with_their_arguments() {
        assert_eq!(
            AgentAction::parse(
                "type",
                &json!({"index": 3, "text": "{{password}}", "submit": true})
            ),
            Ok(AgentAction::Type {
                index: 3,
                text: "{{password}}".to_owned(),
                submit: true
            })
        );
        assert_eq!(
            AgentAction::parse("click", &json!({"index": "7"})),
            Ok(AgentAction::Click { index: 7 })
        );
        assert!(AgentAction::parse("click", &json!({})).is_err());
        assert!(AgentAction::parse("fly", &json!({})).is_err());
        let chosen = Chosen::parse_json(
            "```json\n{\"reason\": \"log in\", \"action\": \"click\", \"args\": {\"index\": 2}}\n```",
        )
        .expect("parses");
        assert_eq!(chosen.action, AgentAction::Click { index: 2 });
        assert_eq!(chosen.reason.as_deref(), Some("log in"));
        assert_eq!(chosen.arguments, json!({"index": 2}));
        let called =
            Chosen::from_call("click", &json!({"index": 4, "reason": "next"})).expect("parses");
        assert_eq!(called.reason.as_deref(), Some("next"));
        assert_eq!(called.arguments, json!({"index": 4}));
    }

    #[test]
    fn every_tool_is_defined_once_and_done_carries_the_schema() {
        let schema = json!({"type": "object", "properties": {"total": {"type": "number"}}});
        let tools = definitions(Some(&schema));
        let names: Vec<&str> = tools
            .iter()
            .filter_map(|tool| tool.pointer("/function/name")?.as_str())
            .collect();
        assert_eq!(names.len(), 12);
        let done = tools
            .iter()
            .find(|tool| tool.pointer("/function/name") == Some(&json!("done")))
            .expect("done");
        assert_eq!(
            done.pointer("/function/parameters/properties/output"),
            Some(&schema)
        );
        assert!(describe_for_json_mode(&tools).contains("- goto: Open a URL."));
    }
}
