//! A container's files as tar streams, through the engine's archive endpoints
//! (`GET`/`PUT /containers/{id}/archive`; the Docker Engine and Podman both serve them):
//! what the docker and swarm providers' `get_archive` and `put_archive` are.
//!
//! The engine resolves paths inside the container's own filesystem, so nothing here can reach
//! the host's; the archive the engine gives is read as hostile by its consumer
//! ([`crate::archive`]). A `PUT` carries only what Lapse wrote (relative entries).

use bollard::Docker;
use bollard::query_parameters::{DownloadFromContainerOptions, UploadToContainerOptions};
use futures::StreamExt;

use crate::ProviderError;
use crate::archive::ArchiveStream;
use crate::engine::{classify, status_of};

/// The directory `dir` of `container` as a tar stream (entries `<basename>/...`).
pub(crate) fn get(docker: &Docker, container: &str, dir: &str) -> ArchiveStream {
    let options = DownloadFromContainerOptions { path: dir.to_owned() };
    docker
        .download_from_container(container, Some(options))
        .map(|chunk| chunk.map_err(|e| std::io::Error::other(format!("the engine's archive: {e}"))))
        .boxed()
}

/// Extracts `tar` at `dest` (existing) in `container`.
pub(crate) async fn put(
    docker: &Docker,
    provider: &'static str,
    environment_id: &str,
    container: &str,
    dest: &str,
    tar: ArchiveStream,
) -> Result<(), ProviderError> {
    let options = UploadToContainerOptions { path: dest.to_owned(), ..Default::default() };
    // A failing source ends the body early, and the call fails with the source's error
    // (what the engine made of the cut archive is overwritten by the next pull).
    let failed = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let seen = failed.clone();
    let body = tar
        .take_while(move |c| {
            if let Err(e) = c {
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
            futures::future::ready(c.is_ok())
        })
        .filter_map(|c| futures::future::ready(c.ok()));
    let sent = docker.upload_to_container(container, Some(options), bollard::body_stream(body)).await;
    if let Some(message) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(ProviderError::Failed { provider, op: "put_archive", message });
    }
    sent.map_err(|e| match status_of(&e) {
        Some(404) => ProviderError::NotFound { provider, environment_id: environment_id.to_owned() },
        _ => classify(provider, "put_archive", e),
    })
}
