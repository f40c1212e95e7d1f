//! The service's data: validated inputs, stored messages, query results and domain events.
//! Types here carry no storage or HTTP concerns; both sides of the service share them.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest room name accepted, in characters.
pub const MAX_ROOM_LEN: usize = 64;
/// Longest author accepted, in characters.
pub const MAX_AUTHOR_LEN: usize = 64;
/// Longest message text accepted, in characters.
pub const MAX_TEXT_LEN: usize = 4000;

/// A validated room name: 1 to 64 characters of `[A-Za-z0-9_-]`.
///
/// Rooms are not declared: a room exists once its first message is posted.
///
/// ```
/// use chat_service::RoomName;
///
/// assert!(RoomName::parse("general").is_ok());
/// assert!(RoomName::parse("no spaces").is_err());
/// assert!(RoomName::parse("").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

impl RoomName {
    /// Validates `name` as a room name.
    pub fn parse(name: &str) -> Result<Self, InvalidInput> {
        if name.is_empty() || name.len() > MAX_ROOM_LEN {
            return Err(InvalidInput::new(format!(
                "room name must be 1 to {MAX_ROOM_LEN} characters long"
            )));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(InvalidInput::new(
                "room name may contain only ASCII letters, digits, '_' and '-'",
            ));
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The surrogate key of this room's cached query responses: `room:{name}`.
    ///
    /// ```
    /// use chat_service::RoomName;
    ///
    /// assert_eq!(RoomName::parse("lobby")?.cache_tag(), "room:lobby");
    /// # Ok::<(), chat_service::InvalidInput>(())
    /// ```
    pub fn cache_tag(&self) -> String {
        format!("room:{}", self.0)
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for RoomName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Input that breaks a validation rule; its message says which.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidInput {
    message: String,
}

impl InvalidInput {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// What is wrong with the input.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InvalidInput {}

/// The body of `POST /rooms/{room}/messages`, before validation: a JSON object; other fields
/// are ignored.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// Who wrote the message: 1 to 64 characters, not blank, no control characters.
    pub author: String,
    /// The message: 1 to 4000 characters, not blank.
    pub text: String,
}

impl NewMessage {
    /// Checks the lengths and characters of `author` and `text`.
    ///
    /// ```
    /// use chat_service::NewMessage;
    ///
    /// let ok = NewMessage { author: "ada".into(), text: "hello".into() };
    /// assert!(ok.validate().is_ok());
    /// let blank = NewMessage { author: "ada".into(), text: "  ".into() };
    /// assert!(blank.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), InvalidInput> {
        check_field("author", &self.author, MAX_AUTHOR_LEN)?;
        if self.author.chars().any(char::is_control) {
            return Err(InvalidInput::new(
                "author must not contain control characters",
            ));
        }
        check_field("text", &self.text, MAX_TEXT_LEN)
    }
}

impl<'de> Deserialize<'de> for NewMessage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            author: String,
            text: String,
        }

        // The derive alone would also accept a sequence such as `["ada", "hi"]`.
        struct ObjectOnly;

        impl<'de> serde::de::Visitor<'de> for ObjectOnly {
            type Value = Fields;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object with \"author\" and \"text\"")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Fields, A::Error> {
                Fields::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }

        let Fields { author, text } = deserializer.deserialize_map(ObjectOnly)?;
        Ok(Self { author, text })
    }
}

fn check_field(field: &str, value: &str, max: usize) -> Result<(), InvalidInput> {
    if value.trim().is_empty() {
        return Err(InvalidInput::new(format!("{field} must not be empty")));
    }
    // Counting stops one past the limit, so a huge value costs no more than a legal one.
    if value.chars().take(max + 1).count() > max {
        return Err(InvalidInput::new(format!(
            "{field} must be at most {max} characters long"
        )));
    }
    Ok(())
}

/// A stored message, as every endpoint returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Unique, increasing across all rooms.
    pub id: i64,
    /// The room the message was posted to.
    pub room: String,
    /// Who wrote it.
    pub author: String,
    /// What they wrote.
    pub text: String,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// One page of `GET /rooms/{room}/messages`, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePage {
    /// The room asked for.
    pub room: String,
    /// Up to `limit` messages, newest first.
    pub messages: Vec<Message>,
    /// Pass as `before` to get the next (older) page; `null` on the last page.
    pub next_before: Option<i64>,
}

/// One room in `GET /rooms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    /// The room's name.
    pub room: String,
    /// How many messages the room holds.
    pub message_count: i64,
    /// The id of its newest message.
    pub last_id: i64,
    /// The room's read-model version: it grows by one with each projected message.
    pub version: i64,
}

/// The body of `GET /rooms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomList {
    /// Rooms ordered by name; at most [`MAX_ROOMS_LISTED`](crate::MAX_ROOMS_LISTED).
    pub rooms: Vec<RoomSummary>,
}

/// Domain event of the command side: a message was durably stored.
///
/// Published once per message, in id order, right after its transaction commits, on the channel
/// returned by [`ChatService::subscribe`](crate::ChatService::subscribe).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessagePosted {
    /// The room the message went to.
    pub room: RoomName,
    /// The new message's id.
    pub id: i64,
}

/// Query-side notice: the read model of a room now includes messages up to `last_id`.
///
/// Published by the projector after its transaction commits, on the channel returned by
/// [`ChatService::subscribe_projected`](crate::ChatService::subscribe_projected). A response
/// cache that drops the tag `room:{room}` on this notice cannot re-store a response read before
/// the change, because every read after it sees the new version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomProjected {
    /// The room whose read model changed.
    pub room: RoomName,
    /// The room's new version (the number its list `ETag` carries).
    pub version: i64,
    /// The newest message id now visible in the room.
    pub last_id: i64,
}

/// What [`ChatService::seed`](crate::ChatService::seed) stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedSummary {
    /// Rooms written to.
    pub rooms: u32,
    /// Messages stored in total.
    pub messages: u64,
    /// Id of the last message stored, if any.
    pub last_id: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(RoomName::parse("a").is_ok());
        assert!(RoomName::parse("A-z_09").is_ok());
        assert!(RoomName::parse(&"x".repeat(64)).is_ok());
        assert!(RoomName::parse(&"x".repeat(65)).is_err());
        assert!(RoomName::parse("").is_err());
        assert!(RoomName::parse("a/b").is_err());
        assert!(RoomName::parse("é").is_err());
        assert!(RoomName::parse("a b").is_err());
    }

    #[test]
    fn message_limits_count_characters() {
        let msg = |author: &str, text: &str| NewMessage {
            author: author.into(),
            text: text.into(),
        };
        assert!(msg("a", &"é".repeat(4000)).validate().is_ok());
        assert!(msg("a", &"é".repeat(4001)).validate().is_err());
        assert!(msg(&"é".repeat(64), "t").validate().is_ok());
        assert!(msg(&"é".repeat(65), "t").validate().is_err());
        assert!(msg("", "t").validate().is_err());
        assert!(msg("a", "").validate().is_err());
        assert!(msg("a\nb", "t").validate().is_err());
        assert!(msg("a", "multi\nline").validate().is_ok());
    }
}
