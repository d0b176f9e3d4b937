//! Spin's outbound MQTT for guests: `fermyon:spin/mqtt@2.0.0` (the Spin SDKs up to 5:
//! `spin_sdk::mqtt`). `Connection.open(address, username, password, keep-alive)` takes an
//! `mqtt://host[:port][?client_id=ID]` URL (port 1883 by default; a client id is made up when
//! the URL names none); it is allowed only if an `allowed_outbound_hosts` entry allows
//! `mqtt://host:port`, and the host's addresses pass the same node-local rule as outbound HTTP.
//! The connection, with rumqttc on tokio, goes to a checked address and is open (the broker's
//! CONNACK received) before `open` returns; `mqtts://` (TLS) is refused. Each open connection
//! counts as an outbound connection of its instance. `publish` returns once the broker has
//! acknowledged the message (QoS 1 and 2) or it has been written (QoS 0).
//!
//! The WIT is the Spin SDK's own (see build.rs).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use wasmtime::component::{Accessor, HasData, Linker, Resource, ResourceTable};

use crate::descriptors::OutboundPermit;
use crate::guest::HostState;
use crate::redis::{CONNECT_TIMEOUT, OutboundServices, Refusal};
use crate::wt;

mod spin2 {
    spin_sdk_5_bindgen! {
        inline: "
            package wms:spin2-mqtt;
            world imports {
                import fermyon:spin/mqtt@2.0.0;
            }
        ",
        imports: { default: async },
        with: { "fermyon:spin/mqtt.connection": crate::mqtt::Connection },
    }
}

mod spin3 {
    spin_sdk_7_bindgen! {
        inline: "
            package wms:spin3-mqtt;
            world imports {
                import spin:mqtt/mqtt@3.0.0;
            }
        ",
        with: { "spin:mqtt/mqtt.connection": crate::mqtt::Connection },
    }
}

use spin2::fermyon::spin2_0_0::mqtt as v2;
use spin3::spin::mqtt::mqtt as v3;

/// The most bytes of one packet the broker may send us (we subscribe to nothing: acks and
/// pings only).
const MAX_INCOMING_PACKET: usize = 16 << 10;
/// The most bytes of one message a guest publishes (MQTT's own limit is 256 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// How long a publish may wait for the broker's acknowledgement.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// An open connection, as the guest's `connection` resource: the client and the event loop
/// that drives it (one publish at a time).
pub struct Connection {
    client: AsyncClient,
    events: Arc<tokio::sync::Mutex<EventLoop>>,
    _permit: OutboundPermit,
}

pub(crate) struct MqttView<'a> {
    pub(crate) table: &'a mut ResourceTable,
    pub(crate) state: &'a mut OutboundServices,
}

struct HasMqtt;

impl HasData for HasMqtt {
    type Data<'a> = MqttView<'a>;
}

/// Host, port and client id of an `mqtt://` URL; `None` if it is not one.
fn parse(address: &str) -> Option<(String, u16, Option<String>)> {
    let url = url::Url::parse(address).ok()?;
    if url.scheme() != "mqtt" && url.scheme() != "mqtts" {
        return None;
    }
    let host = url.host_str()?.to_string();
    let port = url.port().unwrap_or(1883);
    let client_id = url
        .query_pairs()
        .find(|(k, _)| k == "client_id")
        .map(|(_, v)| v.into_owned());
    Some((host, port, client_id))
}

/// A client id for a URL that names none: unique in this process, and random across processes
/// (std's per-process random hash keys).
fn made_up_client_id() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    format!("wms-{:016x}", h.finish())
}

/// Drives `events` until `done` says an event ends the wait; the connection's error otherwise.
async fn drive(events: &mut EventLoop, mut done: impl FnMut(&Event) -> bool) -> Result<(), String> {
    loop {
        match events.poll().await {
            Ok(event) if done(&event) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

impl OutboundServices {
    async fn open_mqtt(
        &self,
        address: &str,
        username: &str,
        password: &str,
        keep_alive: u64,
    ) -> Result<Connection, v2::Error> {
        let Some((host, port, client_id)) = parse(address) else {
            return Err(v2::Error::InvalidAddress);
        };
        let shown = format!("mqtt://{host}:{port}");
        if address.starts_with("mqtts:") {
            tracing::warn!(component = %self.component, "MQTT connection to {shown} denied: mqtts:// (TLS) is not supported by wms yet");
            return Err(v2::Error::ConnectionFailed(format!(
                "connection to {shown} denied: mqtts:// (TLS) is not supported by wms yet"
            )));
        }
        let (addrs, permit) = self
            .admit("MQTT", "mqtt", &shown, &host, port)
            .await
            .map_err(|r| match r {
                Refusal::Denied(why) => v2::Error::ConnectionFailed(why),
                Refusal::Dns => v2::Error::ConnectionFailed(format!("cannot resolve {host}")),
                Refusal::TooMany => v2::Error::TooManyConnections,
            })?;
        let client_id = client_id.unwrap_or_else(made_up_client_id);
        let mut last = None;
        for addr in addrs {
            let mut options =
                MqttOptions::new(client_id.clone(), addr.ip().to_string(), addr.port());
            options
                .set_keep_alive(Duration::from_secs(keep_alive.min(u64::from(u16::MAX))))
                .set_max_packet_size(MAX_INCOMING_PACKET, MAX_MESSAGE_BYTES + 1024)
                .set_request_channel_capacity(1);
            if !username.is_empty() {
                options.set_credentials(username, password);
            }
            let (client, mut events) = AsyncClient::new(options, 1);
            let connected = tokio::time::timeout(
                CONNECT_TIMEOUT,
                drive(&mut events, |e| {
                    matches!(e, Event::Incoming(Packet::ConnAck(_)))
                }),
            )
            .await;
            match connected {
                Ok(Ok(())) => {
                    return Ok(Connection {
                        client,
                        events: Arc::new(tokio::sync::Mutex::new(events)),
                        _permit: permit,
                    });
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(format!("no connection within {CONNECT_TIMEOUT:?}")),
            }
        }
        Err(v2::Error::ConnectionFailed(format!(
            "cannot connect to {shown}: {}",
            last.unwrap_or_else(|| "no address".into())
        )))
    }
}

impl v2::Host for MqttView<'_> {}

impl v2::HostConnection for MqttView<'_> {
    async fn open(
        &mut self,
        address: String,
        username: String,
        password: String,
        keep_alive_interval_in_secs: u64,
    ) -> Result<Resource<Connection>, v2::Error> {
        let conn = self
            .state
            .open_mqtt(&address, &username, &password, keep_alive_interval_in_secs)
            .await?;
        self.table
            .push(conn)
            .map_err(|e| v2::Error::Other(e.to_string()))
    }

    async fn publish(
        &mut self,
        c: Resource<Connection>,
        topic: String,
        payload: Vec<u8>,
        qos: v2::Qos,
    ) -> Result<(), v2::Error> {
        let conn = self
            .table
            .get(&c)
            .map_err(|e| v2::Error::Other(e.to_string()))?;
        let qos = match qos {
            v2::Qos::AtMostOnce => QoS::AtMostOnce,
            v2::Qos::AtLeastOnce => QoS::AtLeastOnce,
            v2::Qos::ExactlyOnce => QoS::ExactlyOnce,
        };
        publish(
            conn.client.clone(),
            conn.events.clone(),
            topic,
            payload,
            qos,
        )
        .await
    }

    async fn drop(&mut self, c: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        Ok(())
    }
}

/// Publishes one message on a connection and waits for it to be written (QoS 0) or
/// acknowledged; one publish at a time per connection.
async fn publish(
    client: AsyncClient,
    events: Arc<tokio::sync::Mutex<EventLoop>>,
    topic: String,
    payload: Vec<u8>,
    qos: QoS,
) -> Result<(), v2::Error> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(v2::Error::Other(format!(
            "a message of {} bytes is over wms's limit of {} MiB",
            payload.len(),
            MAX_MESSAGE_BYTES >> 20
        )));
    }
    let mut events = events.lock().await;
    client
        .try_publish(topic, qos, false, payload)
        .map_err(|e| v2::Error::Other(e.to_string()))?;
    // Written (QoS 0), or acknowledged: PUBACK for QoS 1, PUBCOMP for QoS 2.
    let done = |e: &Event| match qos {
        QoS::AtMostOnce => matches!(e, Event::Outgoing(Outgoing::Publish(_))),
        QoS::AtLeastOnce => matches!(e, Event::Incoming(Packet::PubAck(_))),
        QoS::ExactlyOnce => matches!(e, Event::Incoming(Packet::PubComp(_))),
    };
    match tokio::time::timeout(PUBLISH_TIMEOUT, drive(&mut events, done)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(v2::Error::Other(format!("publish failed: {e}"))),
        Err(_) => Err(v2::Error::Other(format!(
            "the broker did not acknowledge the message within {PUBLISH_TIMEOUT:?}"
        ))),
    }
}

// Spin 3's package (the Spin SDKs 6 and 7): the same calls, async in the component model's
// sense, without holding the store across an await.

impl From<v2::Error> for v3::Error {
    fn from(e: v2::Error) -> Self {
        match e {
            v2::Error::InvalidAddress => v3::Error::InvalidAddress,
            v2::Error::TooManyConnections => v3::Error::TooManyConnections,
            v2::Error::ConnectionFailed(m) => v3::Error::ConnectionFailed(m),
            v2::Error::Other(m) => v3::Error::Other(m),
        }
    }
}

impl v3::Host for MqttView<'_> {}

impl v3::HostConnection for MqttView<'_> {
    fn drop(&mut self, c: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        Ok(())
    }
}

impl<T> v3::HostConnectionWithStore<T> for HasMqtt {
    async fn open(
        accessor: &Accessor<T, Self>,
        address: String,
        username: String,
        password: String,
        keep_alive_interval_in_secs: u64,
    ) -> Result<Resource<Connection>, v3::Error> {
        let services = accessor.with(|mut access| access.get().state.clone());
        let conn = services
            .open_mqtt(&address, &username, &password, keep_alive_interval_in_secs)
            .await?;
        accessor.with(|mut access| {
            access
                .get()
                .table
                .push(conn)
                .map_err(|e| v3::Error::Other(e.to_string()))
        })
    }

    async fn publish(
        accessor: &Accessor<T, Self>,
        c: Resource<Connection>,
        topic: String,
        payload: Vec<u8>,
        qos: v3::Qos,
    ) -> Result<(), v3::Error> {
        let (client, events) = accessor.with(|mut access| {
            access
                .get()
                .table
                .get(&c)
                .map(|conn| (conn.client.clone(), conn.events.clone()))
                .map_err(|e| v3::Error::Other(e.to_string()))
        })?;
        let qos = match qos {
            v3::Qos::AtMostOnce => QoS::AtMostOnce,
            v3::Qos::AtLeastOnce => QoS::AtLeastOnce,
            v3::Qos::ExactlyOnce => QoS::ExactlyOnce,
        };
        Ok(publish(client, events, topic, payload, qos).await?)
    }
}

/// Links `fermyon:spin/mqtt@2.0.0` and `spin:mqtt/mqtt@3.0.0`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    v2::add_to_linker::<HostState, HasMqtt>(linker, HostState::mqtt).map_err(wt)?;
    v3::add_to_linker::<HostState, HasMqtt>(linker, HostState::mqtt).map_err(wt)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn addresses_are_mqtt_urls_with_an_optional_port_and_client_id() {
        assert_eq!(
            parse("mqtt://broker.example.com?client_id=a1"),
            Some(("broker.example.com".into(), 1883, Some("a1".into())))
        );
        assert_eq!(
            parse("mqtt://127.0.0.1:1884"),
            Some(("127.0.0.1".into(), 1884, None))
        );
        assert_eq!(parse("redis://127.0.0.1"), None);
        assert_eq!(parse("not a url"), None);
    }
}
