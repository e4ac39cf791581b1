import NotifyButtons from '../../components/NotifyButtons';
import { currentUser } from '../../lib/session';
import { USERS } from '../../lib/users';

// The layout has redirected anyone not logged in; `me` is set.
export default async function Home() {
  const me = (await currentUser())!;
  const other = USERS.find((id) => id !== me)!;
  return <NotifyButtons me={me} other={other} />;
}
