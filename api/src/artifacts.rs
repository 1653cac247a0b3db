//! `/v1/artifacts/{id}`: download a file a task produced.

use futures::TryStreamExt;
use operator_domain::ArtifactId;
use operator_domain::error::ErrorCode;
use poem::http::header;
use poem::{Body, IntoResponse, Response};
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::{ApiResponse, OpenApi, param::Path};
use uuid::Uuid;

use crate::access::Caller;
use crate::codes;
use crate::error::{ApiError, ApiResult};
use crate::state::SharedState;
use crate::tasks::ApiTags;

/// An artifact's bytes, streamed from storage with its own content type.
pub struct ArtifactBody {
    pub(crate) content_type: String,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    pub(crate) file_name: String,
    pub(crate) body: Body,
}

impl Payload for ArtifactBody {
    /// Documented as binary; the real type is the artifact's (`image/png`, `application/pdf`…).
    const CONTENT_TYPE: &'static str = "application/octet-stream";

    fn check_content_type(_content_type: &str) -> bool {
        true
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("string", "binary")))
    }
}

impl IntoResponse for ArtifactBody {
    fn into_response(self) -> Response {
        Response::builder()
            .content_type(self.content_type)
            .header(header::CONTENT_LENGTH, self.size)
            .header(header::ETAG, format!("\"{}\"", self.sha256))
            .header(
                header::CACHE_CONTROL,
                "private, max-age=31536000, immutable",
            )
            .header(
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{}\"", self.file_name.replace('"', "")),
            )
            .body(self.body)
    }
}

#[derive(ApiResponse)]
pub enum DownloadResponse {
    /// The file, with its content type, length and `ETag` (its SHA-256).
    #[oai(status = 200)]
    Ok(ArtifactBody),
}

codes!(DownloadCodes: InvalidParameter, ArtifactNotFound);

pub struct ArtifactsApi {
    pub state: SharedState,
}

#[OpenApi(tag = "ApiTags::Artifacts")]
impl ArtifactsApi {
    /// Download an artifact.
    #[oai(path = "/v1/artifacts/:id", method = "get")]
    async fn download(
        &self,
        caller: Caller,
        id: Path<Uuid>,
    ) -> ApiResult<DownloadResponse, DownloadCodes> {
        let state = &self.state;
        let Some(artifact) = state
            .repo
            .artifact(&caller.tenant, ArtifactId::from(id.0))
            .await?
        else {
            return Err(ApiError::new(
                ErrorCode::ArtifactNotFound,
                format!("no artifact {}", id.0),
            )
            .into());
        };
        let object = state.storage.get(&artifact.storage_key).await?;
        let stream = object.stream.map_err(std::io::Error::other);
        Ok(DownloadResponse::Ok(ArtifactBody {
            content_type: artifact.content_type,
            size: object.size,
            sha256: artifact.sha256,
            file_name: artifact.name,
            body: Body::from_bytes_stream(stream),
        }))
    }
}
