// The exactly-once floor written with the Java clients of Kafka 4.4: one transactional producer
// and one consumer in a group, read_committed; per poll, the batch's records are copied to the
// state topic and to the accepted topic (the same partition), the consumer's offsets are sent to
// the transaction and it commits — orderflow's loop with the decision taken out, as the Rust pipe
// (`orderflow-bench pipe`) does with librdkafka. On a cluster with transaction.version=2 the Java
// producer adds partitions to the transaction implicitly (KIP-890), where librdkafka 2.12 still
// makes an AddPartitionsToTxn round trip per new partition: the difference is the client library's
// cost.
//
// Usage: java -cp 'deps/*' EosPipe.java --bootstrap HOST:PORT --prefix P [--max-poll 2000]
//        [--poll-ms 20]
// Runs until killed.

import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.ProducerFencedException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class EosPipe {
    public static void main(String[] args) {
        Map<String, String> opt = new HashMap<>(Map.of("--max-poll", "2000", "--poll-ms", "20"));
        for (int i = 0; i + 1 < args.length; i += 2) {
            opt.put(args[i], args[i + 1]);
        }
        String prefix = opt.getOrDefault("--prefix", "");
        String requests = prefix + "order-transition-requests";
        String state = prefix + "order-state";
        String accepted = prefix + "order-transitions";

        Properties c = new Properties();
        c.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, opt.get("--bootstrap"));
        c.put(ConsumerConfig.GROUP_ID_CONFIG, prefix + "group");
        c.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        c.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        c.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        c.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, opt.get("--max-poll"));
        c.put(ConsumerConfig.PARTITION_ASSIGNMENT_STRATEGY_CONFIG,
                "org.apache.kafka.clients.consumer.CooperativeStickyAssignor");
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, opt.get("--bootstrap"));
        p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, prefix + "java-pipe");
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.LINGER_MS_CONFIG, "1");
        p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, "lz4");
        p.put(ProducerConfig.TRANSACTION_TIMEOUT_CONFIG, "10000");

        try (KafkaConsumer<byte[], byte[]> consumer =
                     new KafkaConsumer<>(c, new ByteArrayDeserializer(), new ByteArrayDeserializer());
             KafkaProducer<byte[], byte[]> producer =
                     new KafkaProducer<>(p, new ByteArraySerializer(), new ByteArraySerializer())) {
            producer.initTransactions();
            consumer.subscribe(List.of(requests));
            System.err.println("EosPipe: started, reading " + requests);
            Duration poll = Duration.ofMillis(Long.parseLong(opt.get("--poll-ms")));
            while (true) {
                ConsumerRecords<byte[], byte[]> batch = consumer.poll(poll);
                if (batch.isEmpty()) {
                    continue;
                }
                Map<TopicPartition, OffsetAndMetadata> next = new HashMap<>();
                try {
                    producer.beginTransaction();
                    for (ConsumerRecord<byte[], byte[]> r : batch) {
                        producer.send(new ProducerRecord<>(state, r.partition(), r.key(), r.value()));
                        producer.send(new ProducerRecord<>(accepted, r.partition(), r.key(), r.value()));
                        next.put(new TopicPartition(r.topic(), r.partition()), new OffsetAndMetadata(r.offset() + 1));
                    }
                    producer.sendOffsetsToTransaction(next, consumer.groupMetadata());
                    producer.commitTransaction();
                } catch (ProducerFencedException e) {
                    throw e;
                } catch (KafkaException e) {
                    // As orderflow does: abort and read the batch again from its first offsets.
                    producer.abortTransaction();
                    Map<TopicPartition, Long> first = new HashMap<>();
                    for (ConsumerRecord<byte[], byte[]> r : batch) {
                        first.merge(new TopicPartition(r.topic(), r.partition()), r.offset(), Math::min);
                    }
                    first.forEach(consumer::seek);
                }
            }
        }
    }
}
