//! Outbound HTTP from guests: denied unless the destination matches the component's
//! `allowed_outbound_hosts`. The check sits in the `send_request` hook, so nothing leaves the
//! host for a denied request and the guest sees `HttpRequestDenied`, as under Spin.

use std::sync::Arc;

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};
use wms_manifest::outbound::{AllowedHost, is_allowed};

pub(crate) struct OutboundPolicy {
    pub component: Arc<str>,
    pub allowed: Arc<[AllowedHost]>,
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https").to_string();
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "http" { 80 } else { 443 });
        if !is_allowed(&self.allowed, &scheme, &host, port) {
            tracing::warn!(
                component = %self.component,
                "outbound request to {scheme}://{host}:{port} denied: not in allowed_outbound_hosts"
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        Box::new(async move {
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}
