// Writes transactions with Kafka's own Java producer, aborting some, so that the protocol tests
// can check our read_committed filtering against data we did not write ourselves.
//
// Usage: TxnWriter BOOTSTRAP TOPIC TRANSACTIONS RECORDS_PER_TXN ABORT_EVERY TRANSACTIONAL_ID
// Record values are "txn-<t>-rec-<r>"; transaction t is aborted when (t + 1) % ABORT_EVERY == 0.
// Keys are "k<r>", so records spread over partitions. Prints "committed N" and "aborted M".
import java.util.Properties;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.StringSerializer;

public class TxnWriter {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[1];
        int txns = Integer.parseInt(args[2]);
        int perTxn = Integer.parseInt(args[3]);
        int abortEvery = Integer.parseInt(args[4]);
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, args[5]);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        int committed = 0, aborted = 0;
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
            producer.initTransactions();
            for (int t = 0; t < txns; t++) {
                producer.beginTransaction();
                for (int r = 0; r < perTxn; r++) {
                    producer.send(new ProducerRecord<>(topic, "k" + r, "txn-" + t + "-rec-" + r));
                }
                producer.flush();
                if ((t + 1) % abortEvery == 0) {
                    producer.abortTransaction();
                    aborted += perTxn;
                } else {
                    producer.commitTransaction();
                    committed += perTxn;
                }
            }
        }
        System.out.println("committed " + committed);
        System.out.println("aborted " + aborted);
    }
}
