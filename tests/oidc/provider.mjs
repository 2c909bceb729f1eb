// A real OpenID Connect provider for tests/test_login.py: panva's oidc-provider (9.x, pinned in
// package.json / package-lock.json), one confidential client, one test account, the provider's own
// development login form (devInteractions) and a listener on 127.0.0.1 only.
//
//   OIDC_PORT=9400 OIDC_REDIRECT_URI=http://127.0.0.1:8501/oauth2callback \
//   OIDC_CLIENT_ID=ctehr OIDC_CLIENT_SECRET=... node tests/oidc/provider.mjs
//
// It prints "oidc-provider listening <issuer>" once it accepts connections.
import Provider from 'oidc-provider';

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name}: not set; fix: export ${name} before starting the provider`);
    process.exit(2);
  }
  return value;
}

const port = Number(required('OIDC_PORT'));
const redirectUri = required('OIDC_REDIRECT_URI');
const clientId = required('OIDC_CLIENT_ID');
const clientSecret = required('OIDC_CLIENT_SECRET');
const issuer = `http://127.0.0.1:${port}`;

// The test accounts. devInteractions' login form accepts any login name and uses it as the
// account id; only these ids have an account, so any other name ends the flow with an error.
// OIDC_ACCOUNT2_SUB (with _EMAIL, _NAME) adds a second user (tests/test_users_browser.py).
const ACCOUNT = {
  sub: process.env.OIDC_ACCOUNT_SUB || 'clinician-7f3a',
  email: process.env.OIDC_ACCOUNT_EMAIL || 'ada.clinician@hospital.test',
  name: process.env.OIDC_ACCOUNT_NAME || 'Ada Clinician',
};
const ACCOUNTS = { [ACCOUNT.sub]: ACCOUNT };
if (process.env.OIDC_ACCOUNT2_SUB) {
  ACCOUNTS[process.env.OIDC_ACCOUNT2_SUB] = {
    sub: process.env.OIDC_ACCOUNT2_SUB,
    email: process.env.OIDC_ACCOUNT2_EMAIL || '',
    name: process.env.OIDC_ACCOUNT2_NAME || '',
  };
}

const configuration = {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    post_logout_redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  // Put the scope's claims (name, email) in the ID token as well, as hospital IdPs (Entra ID, Google)
  // do: st.user is read from the ID token, not from the userinfo endpoint.
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: true } },
  cookies: { keys: [clientSecret] },
  async findAccount(ctx, id) {
    const account = Object.hasOwn(ACCOUNTS, id) ? ACCOUNTS[id] : undefined;
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: account.sub, email: account.email, email_verified: true, name: account.name };
      },
    };
  },
  // First-party client: grant the requested scopes without a consent screen (the documented
  // "skip consent" recipe of oidc-provider).
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    if (ctx.oidc.client.clientId !== clientId) return undefined;
    const grant = new ctx.oidc.provider.Grant({ clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid email profile');
    await grant.save();
    return grant;
  },
};

const provider = new Provider(issuer, configuration);
provider.on('server_error', (ctx, err) => console.error('server_error', err));
const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening ${issuer}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
