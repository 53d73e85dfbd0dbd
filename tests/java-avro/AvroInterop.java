// Java side of orderflow's Avro interoperability test (tests/integration/java_avro.rs).
//
//   java -cp 'deps/*' AvroInterop.java write-request SCHEMA OUT   single-object encodes a request
//   java -cp 'deps/*' AvroInterop.java read SCHEMA IN             decodes single-object bytes, prints JSON
//
// Both use org.apache.avro.message (BinaryMessageEncoder/Decoder): the Avro specification's single
// object encoding, the same wire format orderflow writes.

import java.io.File;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;

public class AvroInterop {
    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: AvroInterop write-request|read SCHEMA FILE");
            System.exit(2);
        }
        Schema schema = new Schema.Parser().parse(new File(args[1]));
        Path file = Path.of(args[2]);
        switch (args[0]) {
            case "write-request" -> {
                GenericRecord request = new GenericData.Record(schema);
                byte[] id = new byte[16];
                for (int i = 0; i < 16; i++) id[i] = (byte) (0xA0 + i);
                request.put("request_id", new GenericData.Fixed(schema.getField("request_id").schema(), id));
                request.put("order_id", "order-java-1");
                request.put("transition", "confirm");
                request.put("expected_version", 1L);
                request.put("requested_at", 1764000000999L);
                request.put("source", "payments-java");
                Map<String, String> attributes = new LinkedHashMap<>();
                attributes.put("psp", "adyen");
                attributes.put("amount", "42.00");
                if (schema.getField("attributes") != null) {
                    request.put("attributes", attributes);
                }
                ByteBuffer bytes = new BinaryMessageEncoder<GenericRecord>(GenericData.get(), schema).encode(request);
                byte[] out = new byte[bytes.remaining()];
                bytes.get(out);
                Files.write(file, out);
            }
            case "read" -> {
                BinaryMessageDecoder<GenericRecord> decoder = new BinaryMessageDecoder<>(GenericData.get(), schema);
                GenericRecord record = decoder.decode(Files.readAllBytes(file));
                System.out.println(GenericData.get().toString(record));
            }
            default -> {
                System.err.println("unknown mode " + args[0]);
                System.exit(2);
            }
        }
    }
}
