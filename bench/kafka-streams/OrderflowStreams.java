// orderflow's job as a Kafka Streams 4.4 application, for `make bench` to compare against: the
// same topics, the same Avro single-object records (schemas/), the same definition file and the
// same decision rules (duplicates over the last 8 request ids, unknown transition, unknown order,
// order already exists, version conflict, terminal state, invalid source), exactly_once_v2, and
// the order state in a RocksDB store whose changelog plays the part of orderflow's state topic.
//
// Not built: parking, expiry and retention (the benchmark's input never parks), and the dead-letter
// headers (undecodable records go to the DLQ topic as they are).
//
// Usage: java -cp 'deps/*' OrderflowStreams.java --bootstrap HOST:PORT --prefix P
//        [--definition machines/order-lifecycle.toml] [--schemas schemas] [--commit-ms 20]
//        [--threads 1] [--state-dir DIR] [--store rocksdb|memory]

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.dataformat.toml.TomlMapper;
import java.io.File;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

public class OrderflowStreams {
    static final int RECENT_WINDOW = 8;

    record Transition(String name, boolean create, Set<String> from, String to) {}

    static final Map<String, Transition> TRANSITIONS = new HashMap<>();
    static final Set<String> TERMINAL = new HashSet<>();
    static Schema request, state, accepted, rejected;
    static String topicRequests, topicAccepted, topicRejected, topicDlq;

    static Schema schema(String dir, String name) throws Exception {
        return new Schema.Parser().parse(new File(dir, name + ".avsc"));
    }

    static void loadDefinition(String path) throws Exception {
        JsonNode root = new TomlMapper().readTree(new File(path));
        for (JsonNode s : root.get("states")) {
            if (s.path("terminal").asBoolean(false)) {
                TERMINAL.add(s.get("name").asText());
            }
        }
        for (JsonNode t : root.get("transitions")) {
            Set<String> from = new HashSet<>();
            t.path("from").forEach(f -> from.add(f.asText()));
            String name = t.get("name").asText();
            TRANSITIONS.put(name, new Transition(name, t.path("create").asBoolean(false), from, t.get("to").asText()));
        }
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> opt = new HashMap<>(Map.of(
                "--definition", "machines/order-lifecycle.toml", "--schemas", "schemas",
                "--commit-ms", "20", "--threads", "1", "--store", "rocksdb"));
        for (int i = 0; i + 1 < args.length; i += 2) {
            opt.put(args[i], args[i + 1]);
        }
        String prefix = opt.getOrDefault("--prefix", "");
        loadDefinition(opt.get("--definition"));
        String dir = opt.get("--schemas");
        request = schema(dir, "transition_request.v2");
        state = schema(dir, "order_state.v1");
        accepted = schema(dir, "transition_accepted.v1");
        rejected = schema(dir, "transition_rejected.v1");
        topicRequests = prefix + "order-transition-requests";
        topicAccepted = prefix + "order-transitions";
        topicRejected = prefix + "order-transition-rejections";
        topicDlq = prefix + "order-transition-requests-dlq";

        Topology topology = new Topology();
        topology.addSource("requests", Serdes.String().deserializer(), Serdes.ByteArray().deserializer(), topicRequests);
        topology.addProcessor("decide", Decide::new, "requests");
        // RocksDB (Kafka Streams' default, on local disk) or an in-memory store (like orderflow's
        // caches today); both log their changes to a compacted changelog topic.
        var store = switch (opt.get("--store")) {
            case "memory" -> Stores.inMemoryKeyValueStore("orders");
            case "rocksdb" -> Stores.persistentKeyValueStore("orders");
            default -> throw new IllegalArgumentException("--store rocksdb|memory, not " + opt.get("--store"));
        };
        topology.addStateStore(Stores.keyValueStoreBuilder(store, Serdes.String(), Serdes.ByteArray()), "decide");
        topology.addSink("accepted", topicAccepted, Serdes.String().serializer(), Serdes.ByteArray().serializer(), "decide");
        topology.addSink("rejected", topicRejected, Serdes.String().serializer(), Serdes.ByteArray().serializer(), "decide");
        topology.addSink("dlq", topicDlq, Serdes.String().serializer(), Serdes.ByteArray().serializer(), "decide");

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, prefix + "streams");
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, opt.get("--bootstrap"));
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, opt.get("--commit-ms"));
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, opt.get("--threads"));
        props.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, "1");
        props.put(StreamsConfig.STATE_DIR_CONFIG, opt.getOrDefault("--state-dir", "/tmp/orderflow-streams-" + prefix));
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
        // The same batch bound as orderflow's processor.batch_max_records.
        props.put(StreamsConfig.consumerPrefix("max.poll.records"), "2000");
        props.put(StreamsConfig.producerPrefix("compression.type"), "lz4");

        KafkaStreams streams = new KafkaStreams(topology, props);
        CountDownLatch done = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close();
            done.countDown();
        }));
        streams.setUncaughtExceptionHandler(e -> {
            e.printStackTrace();
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.start();
        System.err.println("OrderflowStreams: started, reading " + topicRequests);
        done.await();
    }

    static GenericData.Fixed uuid(Schema s, ByteBuffer bytes) {
        byte[] copy = new byte[16];
        bytes.duplicate().get(copy);
        return new GenericData.Fixed(s, copy);
    }

    static byte[] bytesOf(Object fixed) {
        return ((GenericData.Fixed) fixed).bytes();
    }

    /** The decision, on the order's state kept in the "orders" store. */
    static class Decide implements Processor<String, byte[], String, byte[]> {
        private final BinaryMessageDecoder<GenericRecord> requests = new BinaryMessageDecoder<>(GenericData.get(), request);
        private final BinaryMessageDecoder<GenericRecord> states = new BinaryMessageDecoder<>(GenericData.get(), state);
        private final BinaryMessageEncoder<GenericRecord> stateOut = new BinaryMessageEncoder<>(GenericData.get(), state);
        private final BinaryMessageEncoder<GenericRecord> acceptedOut = new BinaryMessageEncoder<>(GenericData.get(), accepted);
        private final BinaryMessageEncoder<GenericRecord> rejectedOut = new BinaryMessageEncoder<>(GenericData.get(), rejected);
        private final Schema recentSchema = state.getField("recent_requests").schema().getElementType();
        private final Schema recentUuid = recentSchema.getField("request_id").schema();
        private final Schema outcomeEnum = recentSchema.getField("outcome").schema();
        private final Schema acceptedUuid = accepted.getField("request_id").schema();
        private final Schema rejectedUuid = rejected.getField("request_id").schema();
        private final Schema reasonEnum = rejected.getField("reason").schema();
        private ProcessorContext<String, byte[]> context;
        private KeyValueStore<String, byte[]> store;

        @Override
        public void init(ProcessorContext<String, byte[]> context) {
            this.context = context;
            this.store = context.getStateStore("orders");
        }

        @Override
        public void process(Record<String, byte[]> record) {
            GenericRecord req;
            try {
                req = requests.decode(record.value());
            } catch (Exception e) {
                context.forward(record, "dlq");
                return;
            }
            String orderId = req.get("order_id").toString();
            if (record.key() == null || !record.key().equals(orderId)) {
                context.forward(record, "dlq");
                return;
            }
            long now = System.currentTimeMillis();
            byte[] stored = store.get(orderId);
            GenericRecord current;
            try {
                current = stored == null ? null : states.decode(stored);
            } catch (Exception e) {
                throw new IllegalStateException("undecodable state of " + orderId, e);
            }
            String transitionName = req.get("transition").toString();
            Transition transition = TRANSITIONS.get(transitionName);
            byte[] requestId = bytesOf(req.get("request_id"));
            Object expected = req.get("expected_version");

            if (current == null) {
                String reason = transition == null ? "UNKNOWN_TRANSITION"
                        : !transition.create() ? "UNKNOWN_ORDER"
                        : (expected != null && (Long) expected != 0) ? "VERSION_CONFLICT" : null;
                if (reason != null) {
                    reject(record, req, reason, null, 0, false, now);
                    return;
                }
                GenericRecord created = new GenericData.Record(state);
                created.put("order_id", orderId);
                created.put("state", transition.to());
                created.put("version", 1L);
                created.put("created_at", now);
                created.put("updated_at", now);
                created.put("definition_hash", "kafka-streams");
                created.put("recent_requests", new ArrayList<>(List.of(recent(requestId, "ACCEPTED", transition.to(), transition.to(), 1))));
                created.put("parked", new ArrayList<>());
                store.put(orderId, encode(stateOut, created));
                accept(record, req, null, transition.to(), 1, false, now);
                return;
            }
            String at = current.get("state").toString();
            long version = (Long) current.get("version");
            @SuppressWarnings("unchecked")
            List<GenericRecord> recentList = new ArrayList<>((List<GenericRecord>) current.get("recent_requests"));
            for (GenericRecord r : recentList) {
                if (Arrays.equals(bytesOf(r.get("request_id")), requestId)) {
                    String outcome = r.get("outcome").toString();
                    if (outcome.equals("ACCEPTED")) {
                        accept(record, req, r.get("from").toString(), r.get("to").toString(), (Long) r.get("version"), true, now);
                    } else {
                        reject(record, req, outcome, r.get("from").toString(), (Long) r.get("version"), true, now);
                    }
                    return;
                }
            }
            String reason = transition == null ? "UNKNOWN_TRANSITION"
                    : transition.create() ? "ORDER_ALREADY_EXISTS"
                    : (expected != null && (Long) expected != version) ? "VERSION_CONFLICT"
                    : TERMINAL.contains(at) ? "TERMINAL_STATE"
                    : !transition.from().contains(at) ? "INVALID_TRANSITION" : null;
            GenericRecord next = new GenericData.Record(state);
            for (Schema.Field f : state.getFields()) {
                next.put(f.name(), current.get(f.name()));
            }
            if (reason == null) {
                recentList.add(recent(requestId, "ACCEPTED", at, transition.to(), version + 1));
                next.put("state", transition.to());
                next.put("version", version + 1);
                next.put("updated_at", now);
            } else {
                recentList.add(recent(requestId, reason, at, at, version));
            }
            while (recentList.size() > RECENT_WINDOW) {
                recentList.remove(0);
            }
            next.put("recent_requests", recentList);
            store.put(orderId, encode(stateOut, next));
            if (reason == null) {
                accept(record, req, at, transition.to(), version + 1, false, now);
            } else {
                reject(record, req, reason, at, version, false, now);
            }
        }

        private GenericRecord recent(byte[] id, String outcome, String from, String to, long version) {
            GenericRecord r = new GenericData.Record(recentSchema);
            r.put("request_id", new GenericData.Fixed(recentUuid, id));
            r.put("outcome", new GenericData.EnumSymbol(outcomeEnum, outcome));
            r.put("from", from);
            r.put("to", to);
            r.put("version", version);
            return r;
        }

        private static byte[] encode(BinaryMessageEncoder<GenericRecord> encoder, GenericRecord record) {
            try {
                ByteBuffer buffer = encoder.encode(record);
                byte[] out = new byte[buffer.remaining()];
                buffer.get(out);
                return out;
            } catch (Exception e) {
                throw new IllegalStateException(e);
            }
        }

        private GenericRecord input() {
            RecordMetadata m = context.recordMetadata().orElseThrow();
            GenericRecord input = new GenericData.Record(accepted.getField("input").schema());
            input.put("topic", m.topic());
            input.put("partition", m.partition());
            input.put("offset", m.offset());
            return input;
        }

        private void accept(Record<String, byte[]> record, GenericRecord req, String from, String to, long version, boolean duplicate, long now) {
            GenericRecord out = new GenericData.Record(accepted);
            out.put("request_id", new GenericData.Fixed(acceptedUuid, bytesOf(req.get("request_id"))));
            out.put("order_id", req.get("order_id"));
            out.put("transition", req.get("transition"));
            out.put("from_state", from);
            out.put("to_state", to);
            out.put("version", version);
            out.put("duplicate", duplicate);
            out.put("requested_at", req.get("requested_at"));
            out.put("decided_at", now);
            out.put("source", req.get("source"));
            out.put("attributes", req.get("attributes"));
            out.put("input", input());
            out.put("definition_hash", "kafka-streams");
            context.forward(record.withValue(encode(acceptedOut, out)), "accepted");
        }

        private void reject(Record<String, byte[]> record, GenericRecord req, String reason, String at, long version, boolean duplicate, long now) {
            GenericRecord out = new GenericData.Record(rejected);
            out.put("request_id", new GenericData.Fixed(rejectedUuid, bytesOf(req.get("request_id"))));
            out.put("order_id", req.get("order_id"));
            out.put("transition", req.get("transition"));
            out.put("reason", new GenericData.EnumSymbol(reasonEnum, reason));
            out.put("detail", reason);
            out.put("allowed_from", new ArrayList<>());
            out.put("expected_version", req.get("expected_version"));
            out.put("current_state", at);
            out.put("current_version", version);
            out.put("duplicate", duplicate);
            out.put("requested_at", req.get("requested_at"));
            out.put("decided_at", now);
            out.put("source", req.get("source"));
            out.put("attributes", req.get("attributes"));
            GenericRecord input = new GenericData.Record(rejected.getField("input").schema());
            GenericRecord a = input();
            input.put("topic", a.get("topic"));
            input.put("partition", a.get("partition"));
            input.put("offset", a.get("offset"));
            out.put("input", input);
            out.put("definition_hash", "kafka-streams");
            context.forward(record.withValue(encode(rejectedOut, out)), "rejected");
        }
    }
}
