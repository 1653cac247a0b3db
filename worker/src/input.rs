//! Mouse and keyboard input as a user makes it: CDP `Input` events, which the page sees
//! as trusted events (unlike ones dispatched from script).

use serde::de::IgnoredAny;
use serde_json::json;

use crate::cdp::{CdpError, Page};

/// A point in the viewport, in CSS pixels.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

/// Moves the mouse to `point` (the page gets `mousemove`, `mouseover`, ... as it would
/// from a user).
pub async fn move_mouse(page: &Page, point: Point) -> Result<(), CdpError> {
    page.call::<IgnoredAny>(
        "Input.dispatchMouseEvent",
        json!({ "type": "mouseMoved", "x": point.x, "y": point.y }),
    )
    .await?;
    Ok(())
}

/// A left click at `point`: move there, press, release.
pub async fn click(page: &Page, point: Point) -> Result<(), CdpError> {
    // Sent together: the three events are dispatched in order either way.
    let button = |kind: &str| {
        json!({
            "type": kind, "x": point.x, "y": point.y, "button": "left", "clickCount": 1,
        })
    };
    let calls = [
        page.start(
            "Input.dispatchMouseEvent",
            json!({ "type": "mouseMoved", "x": point.x, "y": point.y }),
        ),
        page.start("Input.dispatchMouseEvent", button("mousePressed")),
        page.start("Input.dispatchMouseEvent", button("mouseReleased")),
    ];
    for call in calls {
        call.answer::<IgnoredAny>().await?;
    }
    Ok(())
}

/// Types `text` into the focused element as one input (no key events).
pub async fn insert_text(page: &Page, text: &str) -> Result<(), CdpError> {
    page.call::<IgnoredAny>("Input.insertText", json!({ "text": text }))
        .await?;
    Ok(())
}

/// Why a key cannot be pressed.
#[derive(Debug, thiserror::Error)]
pub enum PressError {
    #[error(
        "unknown key; use a key name such as \"Enter\", \"Tab\", \"ArrowDown\" or one character"
    )]
    UnknownKey,
    #[error(transparent)]
    Cdp(#[from] CdpError),
}

/// Presses and releases a key: a named key (`Enter`, `Tab`, `ArrowDown`, `F5`, ...) or
/// one character, as on a US keyboard.
pub async fn press_key(page: &Page, name: &str) -> Result<(), PressError> {
    let key = Key::named(name).ok_or(PressError::UnknownKey)?;
    let mut down = json!({
        // A key that produces text is a `keyDown` (Chromium inserts the text); one
        // that does not is a `rawKeyDown`, as a real keyboard sends.
        "type": if key.text.is_some() { "keyDown" } else { "rawKeyDown" },
        "key": key.key,
        "code": key.code,
        "windowsVirtualKeyCode": key.key_code,
        "nativeVirtualKeyCode": key.key_code,
    });
    if let Some(text) = &key.text {
        down["text"] = json!(text);
        down["unmodifiedText"] = json!(text);
    }
    let up = json!({
        "type": "keyUp",
        "key": key.key,
        "code": key.code,
        "windowsVirtualKeyCode": key.key_code,
        "nativeVirtualKeyCode": key.key_code,
    });
    let calls = [
        page.start("Input.dispatchKeyEvent", down),
        page.start("Input.dispatchKeyEvent", up),
    ];
    for call in calls {
        call.answer::<IgnoredAny>().await?;
    }
    Ok(())
}

/// What Chromium needs to know about a key press.
#[derive(Debug, PartialEq)]
struct Key {
    /// The DOM `key` value (`"Enter"`, `"a"`).
    key: String,
    /// The DOM `code` value: the physical key (`"Enter"`, `"KeyA"`); empty when unknown.
    code: String,
    /// The Windows virtual key code, which Chromium's key handling goes by.
    key_code: u32,
    /// The text the key types, if any.
    text: Option<String>,
}

impl Key {
    fn named(name: &str) -> Option<Self> {
        let mut characters = name.chars();
        if let (Some(character), None) = (characters.next(), characters.next()) {
            return Some(Self::character(character));
        }
        let (key_code, text) = match name {
            "Backspace" => (8, None),
            "Tab" => (9, None),
            "Enter" => (13, Some("\r")),
            "Shift" | "ShiftLeft" | "ShiftRight" => (16, None),
            "Control" | "ControlLeft" | "ControlRight" => (17, None),
            "Alt" | "AltLeft" | "AltRight" => (18, None),
            "Pause" => (19, None),
            "CapsLock" => (20, None),
            "Escape" => (27, None),
            "Space" => (32, Some(" ")),
            "PageUp" => (33, None),
            "PageDown" => (34, None),
            "End" => (35, None),
            "Home" => (36, None),
            "ArrowLeft" => (37, None),
            "ArrowUp" => (38, None),
            "ArrowRight" => (39, None),
            "ArrowDown" => (40, None),
            "Insert" => (45, None),
            "Delete" => (46, None),
            "Meta" | "MetaLeft" | "MetaRight" => (91, None),
            "ContextMenu" => (93, None),
            _ => match name
                .strip_prefix('F')
                .and_then(|number| number.parse::<u32>().ok())
            {
                Some(number @ 1..=12) => (111 + number, None),
                _ => return None,
            },
        };
        // The `key` of a modifier is its name without the side; `Space` types " ".
        let key = match name {
            "Space" => " ",
            _ => name
                .strip_suffix("Left")
                .or_else(|| name.strip_suffix("Right"))
                .filter(|base| matches!(*base, "Shift" | "Control" | "Alt" | "Meta"))
                .unwrap_or(name),
        };
        let code = match name {
            "Shift" | "Control" | "Alt" | "Meta" => format!("{name}Left"),
            _ => name.to_owned(),
        };
        Some(Self {
            key: key.to_owned(),
            code,
            key_code,
            text: text.map(str::to_owned),
        })
    }

    /// A key that types one character: letters and digits have their key's code and
    /// code; anything else is typed as its text.
    fn character(character: char) -> Self {
        let (code, key_code) = if character.is_ascii_alphabetic() {
            let upper = character.to_ascii_uppercase();
            (format!("Key{upper}"), u32::from(upper))
        } else if character.is_ascii_digit() {
            (format!("Digit{character}"), u32::from(character))
        } else if character == ' ' {
            ("Space".to_owned(), 32)
        } else if character == '\n' || character == '\r' {
            ("Enter".to_owned(), 13)
        } else {
            (String::new(), 0)
        };
        let text = if character == '\n' {
            "\r".to_owned()
        } else {
            character.to_string()
        };
        Self {
            key: if key_code == 13 {
                "Enter".to_owned()
            } else {
                character.to_string()
            },
            code,
            key_code,
            text: Some(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_keys_have_their_codes() {
        let enter = Key::named("Enter").expect("Enter");
        assert_eq!((enter.key_code, enter.text.as_deref()), (13, Some("\r")));
        let tab = Key::named("Tab").expect("Tab");
        assert_eq!(
            (tab.key.as_str(), tab.code.as_str(), tab.key_code),
            ("Tab", "Tab", 9)
        );
        assert!(tab.text.is_none());
        assert_eq!(Key::named("ArrowDown").expect("ArrowDown").key_code, 40);
        assert_eq!(Key::named("F5").expect("F5").key_code, 116);
        let shift = Key::named("ShiftRight").expect("ShiftRight");
        assert_eq!(
            (shift.key.as_str(), shift.code.as_str()),
            ("Shift", "ShiftRight")
        );
        assert_eq!(
            Key::named("Space").expect("Space").text.as_deref(),
            Some(" ")
        );
    }

    #[test]
    fn characters_type_themselves() {
        let a = Key::named("a").expect("a");
        assert_eq!(
            a,
            Key {
                key: "a".into(),
                code: "KeyA".into(),
                key_code: 65,
                text: Some("a".into())
            }
        );
        assert_eq!(Key::named("7").expect("7").code, "Digit7");
        let euro = Key::named("€").expect("€");
        assert_eq!((euro.key_code, euro.text.as_deref()), (0, Some("€")));
    }

    #[test]
    fn unknown_names_are_refused() {
        assert!(Key::named("Hyper").is_none());
        assert!(Key::named("F13").is_none());
        assert!(Key::named("").is_none());
    }
}
