// The Java client (kafka-clients, the version of the project's broker jars) as a peer in the
// commit-latency benchmark (benches/commit_latency.rs), which compiles this file with javac against
// `scripts/kafka classpath` and drives it over stdin/stdout, so that the three clients run the same
// workload against the same broker in the same run, interleaved.
//
// Usage: java -cp <classes>:<kafka libs> CommitLatency BOOTSTRAP TRANSACTIONAL_ID TOPIC
// Prints "ready" once initTransactions() returned. Then, per stdin line "N P COUNT", runs COUNT
// back-to-back transactions (beginTransaction -> N records of 100 bytes to partitions i % P ->
// commitTransaction) and prints one line with each transaction's latency in nanoseconds, or -1 for
// a transaction that failed (the error goes to stderr; the producer is closed and a new one
// initialized, as an application would). A line "quit" or end of input closes the producer.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Properties;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class CommitLatency {
    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: CommitLatency BOOTSTRAP TRANSACTIONAL_ID TOPIC");
            System.exit(2);
        }
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        props.put("transactional.id", args[1]);
        // The same producer settings as the other two peers: no linger (Kafka 4 defaults to 5 ms),
        // acks=all, idempotent (implied by transactions).
        props.put("linger.ms", "0");
        props.put("acks", "all");
        props.put("key.serializer", ByteArraySerializer.class.getName());
        props.put("value.serializer", ByteArraySerializer.class.getName());
        String topic = args[2];
        byte[] value = new byte[100];
        Arrays.fill(value, (byte) 'z');

        KafkaProducer<byte[], byte[]> producer = start(props);
        try {
            System.out.println("ready");
            System.out.flush();
            BufferedReader in =
                    new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            String line;
            while ((line = in.readLine()) != null) {
                String[] f = line.trim().split("\\s+");
                if (f.length == 0 || f[0].equals("quit")) {
                    break;
                }
                int n = Integer.parseInt(f[0]);
                int p = Integer.parseInt(f[1]);
                int count = Integer.parseInt(f[2]);
                StringBuilder out = new StringBuilder(count * 9);
                for (int c = 0; c < count; c++) {
                    long start = System.nanoTime();
                    long nanos;
                    try {
                        producer.beginTransaction();
                        for (int i = 0; i < n; i++) {
                            producer.send(new ProducerRecord<>(topic, i % p, null, value));
                        }
                        producer.commitTransaction();
                        nanos = System.nanoTime() - start;
                    } catch (KafkaException e) {
                        System.err.println("CommitLatency: transaction failed, new producer: " + e);
                        producer.close();
                        producer = start(props);
                        nanos = -1;
                    }
                    if (c > 0) {
                        out.append(' ');
                    }
                    out.append(nanos);
                }
                System.out.println(out);
                System.out.flush();
            }
        } finally {
            producer.close();
        }
    }

    private static KafkaProducer<byte[], byte[]> start(Properties props) {
        KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props);
        producer.initTransactions();
        return producer;
    }
}
