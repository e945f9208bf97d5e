// Java's PKIX validator as an independent client of the CA: validates a certificate chain to a
// trust anchor with revocation checking of the end entity, by OCSP (the responder named in the
// certificate's AIA, fetched over HTTP by the JDK) or by CRL (the distribution point named in
// the certificate, fetched by the JDK with -Dcom.sun.security.enableCRLDP=true). No fallback
// from one to the other, and an unknown status is a failure.
//
// Run as a single source file (JDK 11+):
//   java [-Dcom.sun.security.enableCRLDP=true] PkixCheck.java ocsp|crl ROOT.pem CHAIN.pem
// CHAIN.pem holds the end entity first, then its issuers up to (not including) the root.
// Prints "VALID", or "INVALID <reason>: <message>" and exits 1; other errors exit 2.

import java.io.FileInputStream;
import java.io.InputStream;
import java.security.cert.CertPath;
import java.security.cert.CertPathValidator;
import java.security.cert.CertPathValidatorException;
import java.security.cert.CertificateFactory;
import java.security.cert.PKIXParameters;
import java.security.cert.PKIXRevocationChecker;
import java.security.cert.TrustAnchor;
import java.security.cert.X509Certificate;
import java.util.ArrayList;
import java.util.EnumSet;
import java.util.List;
import java.util.Set;

public class PkixCheck {
    public static void main(String[] args) throws Exception {
        if (args.length != 3 || !(args[0].equals("ocsp") || args[0].equals("crl"))) {
            System.err.println("usage: PkixCheck ocsp|crl ROOT.pem CHAIN.pem");
            System.exit(2);
        }
        CertificateFactory cf = CertificateFactory.getInstance("X.509");
        X509Certificate root;
        try (InputStream in = new FileInputStream(args[1])) {
            root = (X509Certificate) cf.generateCertificate(in);
        }
        List<X509Certificate> chain = new ArrayList<>();
        try (InputStream in = new FileInputStream(args[2])) {
            for (Object c : cf.generateCertificates(in)) {
                chain.add((X509Certificate) c);
            }
        }
        CertPath path = cf.generateCertPath(chain);
        PKIXParameters params = new PKIXParameters(Set.of(new TrustAnchor(root, null)));
        CertPathValidator validator = CertPathValidator.getInstance("PKIX");
        PKIXRevocationChecker checker = (PKIXRevocationChecker) validator.getRevocationChecker();
        EnumSet<PKIXRevocationChecker.Option> options =
            EnumSet.of(PKIXRevocationChecker.Option.ONLY_END_ENTITY, PKIXRevocationChecker.Option.NO_FALLBACK);
        if (args[0].equals("crl")) {
            options.add(PKIXRevocationChecker.Option.PREFER_CRLS);
        }
        checker.setOptions(options);
        params.addCertPathChecker(checker);
        params.setRevocationEnabled(true);
        try {
            validator.validate(path, params);
            System.out.println("VALID");
        } catch (CertPathValidatorException e) {
            System.out.println("INVALID " + e.getReason() + ": " + e.getMessage());
            System.exit(1);
        }
    }
}
